// Rates measured in CPU time of the whole process, in alternating rounds: on a
// shared machine the CPU a function costs varies far less than the wall time
// it takes, and alternating gives every contender the same conditions.

/** Best rate (bytes per CPU-second) of each function, each call processing `bytes` bytes. */
export function cpuRates(bytes: number, rounds: number, minMs: number, fns: Array<() => void>): number[] {
  fns.forEach((fn) => fn());
  const best = fns.map(() => 0);
  for (let r = 0; r < rounds; r++) {
    fns.forEach((fn, i) => {
      let n = 0;
      const cpu0 = process.cpuUsage();
      let spent: number;
      do {
        fn();
        n++;
        const c = process.cpuUsage(cpu0);
        spent = (c.user + c.system) / 1e3;
      } while (spent < minMs);
      best[i] = Math.max(best[i], (bytes * n) / (spent / 1000));
    });
  }
  return best;
}
