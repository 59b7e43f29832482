/**
 * The NBD servers the benchmark compares, each started on a loopback port
 * over the same image, and a way to wait for it and to stop it.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export interface ServerSpec {
  name: string;
  /** Makes what the server needs once before the rounds (a completed destination's copy). */
  prepare?(image: string): Promise<void>;
  /** The file it serves, when not the image itself (to warm its page cache). */
  served?(image: string): string;
  /** Export name to put in the URI. */
  exportName: string;
  /** How it is configured, for the report. */
  describe: string;
  start(image: string, port: number): ChildProcess;
}

const FERRY_BIN = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

export function serverSpecs(ferryNodeArgs: string[]): ServerSpec[] {
  return [
    {
      name: 'ferry',
      exportName: '',
      describe:
        `node ${ferryNodeArgs.join(' ')} bin/ferry.js serve --image IMG --listen 127.0.0.1:PORT --log-level warn (one JS thread; writes and misses go to the libuv pool of 16)`.replace(
          '  ',
          ' ',
        ),
      start: (image, port) =>
        spawn(
          process.execPath,
          [
            ...ferryNodeArgs,
            FERRY_BIN,
            'serve',
            '--image',
            image,
            '--listen',
            `127.0.0.1:${port}`,
            '--log-level',
            'warn',
          ],
          { stdio: ['ignore', 'ignore', 'inherit'] },
        ),
    },
    {
      name: 'ferry-dest',
      exportName: 'dest',
      describe: `node ${ferryNodeArgs.join(' ')} bin/ferry.js dest --image IMG.dest --export dest --listen 127.0.0.1:PORT (a completed migration of IMG, serving its copy)`,
      prepare: (image) => completedDestination(image),
      served: (image) => `${image}.dest`,
      start: (image, port) =>
        spawn(
          process.execPath,
          [
            ...ferryNodeArgs,
            FERRY_BIN,
            'dest',
            ...['--image', `${image}.dest`, '--export', 'dest', '--control', `${image}.dest.sock`],
            ...['--listen', `127.0.0.1:${port}`, '--log-level', 'warn'],
          ],
          { stdio: ['ignore', 'ignore', 'inherit'] },
        ),
    },
    {
      name: 'nbdkit',
      exportName: '',
      describe: 'nbdkit --foreground --ipaddr 127.0.0.1 --port PORT file IMG (16 threads, parallel model)',
      start: (image, port) =>
        spawn('nbdkit', ['--foreground', '--ipaddr', '127.0.0.1', '--port', String(port), 'file', `file=${image}`], {
          stdio: ['ignore', 'ignore', 'inherit'],
        }),
    },
    {
      name: 'qemu-nbd',
      exportName: 'bench',
      describe:
        'qemu-nbd -f raw -x bench -b 127.0.0.1 -p PORT --cache=writeback --aio=threads -t -e 16 IMG (one coroutine thread + I/O pool)',
      start: (image, port) =>
        spawn(
          'qemu-nbd',
          [
            '-f',
            'raw',
            '-x',
            'bench',
            '-b',
            '127.0.0.1',
            '-p',
            String(port),
            '--cache=writeback',
            '--aio=threads',
            '-t',
            '-e',
            '16',
            image,
          ],
          { stdio: ['ignore', 'ignore', 'inherit'] },
        ),
    },
  ];
}

/**
 * Migrates IMG into IMG.dest once (ferry serve as the source, ferry dest with
 * cutover at start), so the bench can serve a completed destination.
 */
async function completedDestination(image: string): Promise<void> {
  const copy = `${image}.dest`;
  const state = `${copy}.ferry-state`;
  if (fs.existsSync(copy) && fs.existsSync(state) && fs.statSync(copy).mtimeMs >= fs.statSync(image).mtimeMs) return;
  fs.rmSync(copy, { force: true });
  fs.rmSync(state, { force: true });
  const sourcePort = await freePort();
  const source = spawn(
    process.execPath,
    [FERRY_BIN, 'serve', '--image', image, '--read-only', '--listen', `127.0.0.1:${sourcePort}`, '--log-level', 'warn'],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  try {
    await waitForExport(`nbd://127.0.0.1:${sourcePort}/`, source);
    const destPort = await freePort();
    const dest = spawn(
      process.execPath,
      [
        FERRY_BIN,
        'dest',
        '--cutover-at-start',
        ...['--source', `nbd://127.0.0.1:${sourcePort}/`, '--image', copy, '--control', `${copy}.sock`],
        ...['--listen', `127.0.0.1:${destPort}`, '--log-level', 'info'],
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    await new Promise<void>((resolve, reject) => {
      let log = '';
      dest.stderr!.on('data', (b: Buffer) => {
        log += b.toString();
        if (log.includes('migration complete')) resolve();
      });
      dest.on('exit', (code) => reject(new Error(`ferry dest exited with ${code} before completing:\n${log}`)));
    });
    await stopServer(dest);
  } finally {
    await stopServer(source);
  }
}

/** Resolves once the export answers nbdinfo (a bare TCP probe would make qemu-nbd log a failed handshake). */
export async function waitForExport(uri: string, child: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode} before listening`);
    if (spawnSync('nbdinfo', ['--size', uri], { stdio: 'ignore' }).status === 0) return;
    if (Date.now() > deadline) throw new Error(`${uri} did not answer within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** A free loopback port, from the kernel. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** User + system CPU seconds a process has used so far (/proc/PID/stat). */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}
