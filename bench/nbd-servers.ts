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
        `node ${ferryNodeArgs.join(' ')} bin/ferry.js serve --image IMG --listen 127.0.0.1:PORT --log-level warn (one JS thread; misses go to the libuv pool of 4)`.replace(
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
