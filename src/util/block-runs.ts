/** Consecutive runs of a sorted list of block numbers, as [first, count]: one request or one write per run. */
export function blockRuns(sorted: readonly number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const b of sorted) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else out.push([b, 1]);
  }
  return out;
}
