/** Byte rates as operators write them: 1048576, 512k, 10M, 1.5G (powers of 1024); "off" or 0 for none. */
export function parseByteRate(text: string, where: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*$/.exec(text);
  if (text.trim().toLowerCase() === 'off') return 0;
  if (!m) throw new Error(`${where} must be a byte rate such as 1048576, 512k, 10M or 1.5G (got "${text}")`);
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase()]!;
  return Math.round(Number(m[1]) * scale);
}
