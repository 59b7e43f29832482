/** The fio jobs every server gets, run through fio's nbd engine, and their results. */
import { spawn } from 'node:child_process';

export interface FioJob {
  name: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  bs: string;
  iodepth: number;
}

export const FIO_JOBS: FioJob[] = [
  { name: '4k random read QD16', rw: 'randread', bs: '4k', iodepth: 16 },
  { name: '1M sequential read QD16', rw: 'read', bs: '1M', iodepth: 16 },
  { name: '4k random write QD16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { name: '1M sequential write QD16', rw: 'write', bs: '1M', iodepth: 16 },
];

export interface FioResult {
  iops: number;
  bytesPerSecond: number;
  /** Mean completion latency, microseconds. */
  latencyUs: number;
}

/** `rateMiB`: fio's rate cap in MiB/s, so that servers can be compared in CPU per byte at one load. */
export function fioArgs(job: FioJob, uri: string, size: number, runtimeSeconds: number, rateMiB?: number): string[] {
  return [
    `--name=${job.rw}-${job.bs}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--size=${size}`,
    '--time_based',
    `--runtime=${runtimeSeconds}`,
    '--ramp_time=1',
    '--randrepeat=0',
    '--norandommap',
    '--output-format=json',
    ...(rateMiB ? [`--rate=${rateMiB}m`] : []),
  ];
}

export function runFio(
  job: FioJob,
  uri: string,
  size: number,
  runtimeSeconds: number,
  rateMiB?: number,
): Promise<FioResult> {
  const args = fioArgs(job, uri, size, runtimeSeconds, rateMiB);
  return new Promise((resolve, reject) => {
    const child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`fio ${args.join(' ')} exited ${code}: ${err}`));
      try {
        const report = JSON.parse(out.slice(out.indexOf('{'))) as {
          jobs: Array<Record<'read' | 'write', { iops: number; bw_bytes: number; clat_ns: { mean: number } }>>;
        };
        const side = report.jobs[0][job.rw.includes('read') ? 'read' : 'write'];
        resolve({ iops: side.iops, bytesPerSecond: side.bw_bytes, latencyUs: side.clat_ns.mean / 1000 });
      } catch (e) {
        reject(new Error(`cannot parse fio output: ${(e as Error).message}\n${out.slice(0, 500)}`));
      }
    });
  });
}
