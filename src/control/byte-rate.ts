/**
 * Byte rates as operators type them: `ferry ctl rate 10M`.
 * Suffixes are binary, as `ferry dest --rate` reads them: k = 1024, M = 1024², G = 1024³,
 * T = 1024⁴; `Ki`, `Mi`, ... mean the same. An optional trailing `B` or `B/s` is accepted.
 * `off` (or `none`, `unlimited`) means no limit.
 */
const MULTIPLIERS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Parses a rate in bytes per second; null means "no limit". Throws naming the value. */
export function parseByteRate(text: string): number | null {
  const value = text.trim();
  if (/^(off|none|unlimited)$/i.test(value)) return null;
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]i?)?(?:b(?:\/s)?)?$/i.exec(value);
  if (!match)
    throw new Error(
      `rate must be bytes per second like 500000, 512k, 10M, 1.5G (k = 1024), or "off" to remove the limit (got "${text}")`,
    );
  const exact = Number(match[1]) * MULTIPLIERS[(match[2] ?? '').toLowerCase().replace('i', '')];
  if (exact === 0)
    throw new Error(
      `rate 0 would stop the copy: use "ferry ctl pause", or "rate off" to remove the limit (got "${text}")`,
    );
  // A fraction of a byte per second is a slip (0.5 meant 0.5M?), not a rate to round up to 1 B/s.
  if (exact < 1) throw new Error(`rate must be at least 1 byte per second (got "${text}" = ${exact} bytes/s)`);
  const bytes = Math.round(exact);
  if (!Number.isSafeInteger(bytes)) throw new Error(`rate is too large (got "${text}")`);
  return bytes;
}

/** 1536 → "1.5 KiB"; binary units, as image sizes are. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** 10485760 → "10.0 MiB/s"; binary units, as rates are typed. */
export function formatRate(bytesPerSecond: number): string {
  return formatBytes(Math.round(bytesPerSecond)) + '/s';
}

/** 3725 → "1h 2m 5s"; null → "unknown". */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return 'unknown';
  let s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h > 0) return `${h}h ${m}m ${s}s`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}
