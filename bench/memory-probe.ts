/**
 * Preloaded into ferry's daemons (`NODE_OPTIONS="--require build/bench/memory-probe.js"`,
 * with FERRY_MEMORY_PROBE_DIR set) to see where their memory goes: every
 * 100 ms one JSON line of /proc/self/status (VmRSS, RssAnon, RssFile, VmHWM, Threads),
 * process.memoryUsage() and V8's heap spaces, in MiB, to
 * DIR/ROLE-PID.jsonl; at exit a last line with the sample of the highest RSS.
 * Other processes (the bench itself, fio, ferry ctl) write nothing.
 */
import fs from 'node:fs';
import v8 from 'node:v8';
import { isMainThread } from 'node:worker_threads';

const dir = process.env.FERRY_MEMORY_PROBE_DIR;
const role = process.argv.slice(2).find((a) => ['dest', 'source', 'serve', 'daemon'].includes(a));

type Sample = Record<string, number | Record<string, number>>;

if (isMainThread && dir && role) {
  const file = `${dir}/${role}-${process.pid}.jsonl`;
  const mib = (bytes: number): number => Math.round((bytes / 2 ** 20) * 10) / 10;
  let peak: Sample | null = null;
  const sample = (): Sample => {
    const status = fs.readFileSync('/proc/self/status', 'utf8');
    const kib = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    const m = process.memoryUsage();
    const s: Sample = {
      t: Date.now(),
      rss: mib(kib('VmRSS') * 1024),
      anon: mib(kib('RssAnon') * 1024),
      file: mib(kib('RssFile') * 1024),
      hwm: mib(kib('VmHWM') * 1024),
      // Threads of the process: each codec pool worker adds its own thread and V8's few.
      threads: kib('Threads'),
      heapTotal: mib(m.heapTotal),
      heapUsed: mib(m.heapUsed),
      external: mib(m.external),
      arrayBuffers: mib(m.arrayBuffers),
      spaces: Object.fromEntries(v8.getHeapSpaceStatistics().map((x) => [x.space_name, mib(x.space_size)])),
    };
    if (!peak || (s.rss as number) > (peak.rss as number)) peak = s;
    return s;
  };
  setInterval(() => fs.appendFileSync(file, JSON.stringify(sample()) + '\n'), 100).unref();
  process.on('exit', () => {
    const last = sample();
    fs.appendFileSync(file, JSON.stringify({ peak, last }) + '\n');
  });
}
