/**
 * A QEMU guest for the VM tests: the test guest (guest-image.ts) on one NBD
 * disk, its serial console on the process's stdio (lines in, commands out),
 * and two QMP sockets (one for the command under test, one for the test).
 * Killed at teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { GuestImage } from './guest-image';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export interface VmOptions {
  name: string;
  dir: string;
  guest: GuestImage;
  /** The disk: an NBD URI QEMU opens (nbd://HOST:PORT/EXPORT). */
  diskUri: string;
  memoryMiB: number;
  /** -incoming URI for a migration destination. */
  incoming?: string;
}

export interface Vm {
  child: ChildProcess;
  /** QMP socket for a client of the test's choosing (ferry migrate-vm). */
  qmpPath: string;
  /** A second QMP socket the test itself uses. */
  testQmpPath: string;
  /** Console lines the guest wrote ("FERRY ..." ones, CR removed). */
  lines: string[];
  /** Resolves with the first console line from index `from` on that matches. */
  waitFor(pattern: RegExp, timeoutMs: number, from?: number): Promise<RegExpExecArray>;
  /** Resolves with the count-th matching console line from index `from` on. */
  waitForCount(pattern: RegExp, count: number, timeoutMs: number, from?: number): Promise<RegExpExecArray>;
  send(command: string): void;
  exited: Promise<number | null>;
  kill(): Promise<void>;
  /** Everything QEMU wrote to stderr. */
  stderr(): string;
}

/**
 * TCG unless FERRY_VM_ACCEL=kvm: a /dev/kvm that opens is no proof that KVM runs a guest (nested
 * in some cloud VMs the guest's kernel hangs after the firmware, printing nothing), and TCG boots
 * this guest in seconds everywhere.
 */
const ACCEL = process.env.FERRY_VM_ACCEL === 'kvm' ? ['-accel', 'kvm', '-accel', 'tcg'] : ['-accel', 'tcg'];

export function startVm(t: Teardownable, o: VmOptions): Vm {
  const qmpPath = path.join(o.dir, `${o.name}.qmp`);
  const testQmpPath = path.join(o.dir, `${o.name}-test.qmp`);
  for (const p of [qmpPath, testQmpPath]) fs.rmSync(p, { force: true });
  const args = [
    ...ACCEL,
    '-nodefaults',
    '-m',
    String(o.memoryMiB),
    '-smp',
    '1',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-kernel',
    o.guest.kernel,
    '-initrd',
    o.guest.initrd,
    '-append',
    'console=ttyS0 quiet loglevel=1 panic=-1',
    '-drive',
    `file=${o.diskUri},format=raw,if=virtio,cache=none`,
    '-qmp',
    `unix:${qmpPath},server=on,wait=off`,
    '-qmp',
    `unix:${testQmpPath},server=on,wait=off`,
    ...(o.incoming ? ['-incoming', o.incoming] : []),
  ];
  const child = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let alive = true;
  const lines: string[] = [];
  const listeners = new Set<() => void>();
  const exited = new Promise<number | null>((resolve) =>
    child.on('close', (code) => {
      alive = false;
      resolve(code);
      for (const l of listeners) l();
    }),
  );
  child.on('error', () => undefined);
  child.stdin!.on('error', () => undefined);
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (s: string) => (stderr += s));
  let pending = '';
  child.stdout!.setEncoding('latin1');
  child.stdout!.on('data', (s: string) => {
    pending += s;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl).replace(/\r/g, '');
      pending = pending.slice(nl + 1);
      const at = line.indexOf('FERRY ');
      if (at >= 0) lines.push(line.slice(at));
    }
    for (const l of listeners) l();
  });
  const kill = async (): Promise<void> => {
    if (alive) child.kill('SIGKILL');
    await exited;
  };
  t.teardown(kill);
  const waitForCount = (pattern: RegExp, count: number, timeoutMs: number, from = 0): Promise<RegExpExecArray> =>
    new Promise((resolve, reject) => {
      let next = from;
      let seen = 0;
      const check = (): boolean => {
        for (; next < lines.length; next++) {
          const m = pattern.exec(lines[next]);
          if (m && ++seen === count) {
            done();
            resolve(m);
            return true;
          }
        }
        if (!alive) {
          done();
          reject(new Error(`${o.name} QEMU exited before the guest printed ${pattern}; stderr:\n${stderr}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `${o.name}: the guest printed ${seen} of ${count} ${pattern} within ${timeoutMs} ms; last lines:\n` +
              `${lines.slice(-10).join('\n')}\nstderr:\n${stderr}`,
          ),
        );
      }, timeoutMs);
      const listener = (): void => void check();
      const done = (): void => {
        clearTimeout(timer);
        listeners.delete(listener);
      };
      if (!check()) listeners.add(listener);
    });
  return {
    child,
    qmpPath,
    testQmpPath,
    lines,
    waitFor: (pattern, timeoutMs, from) => waitForCount(pattern, 1, timeoutMs, from),
    waitForCount,
    send: (command) => void child.stdin!.write(command + '\n'),
    exited,
    kill,
    stderr: () => stderr,
  };
}

/** Waits until a QMP socket file exists (QEMU creates it while starting). */
export async function waitForSocket(file: string, vm: Vm, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (vm.child.exitCode !== null) throw new Error(`QEMU exited while starting:\n${vm.stderr()}`);
    if (Date.now() > end) throw new Error(`QEMU did not create ${file} within ${timeoutMs} ms:\n${vm.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
