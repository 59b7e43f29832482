/**
 * qemu-nbd as a test's NBD source on a Unix socket in the test's directory.
 * It is started with --fork, whose parent exits only once the socket
 * accepts connections, and killed (by its pid file) at teardown.
 */
import fs from 'node:fs';
import path from 'node:path';
import { runOk } from './run';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export interface QemuNbd {
  socket: string;
  /** nbd+unix:///NAME?socket=PATH (NAME empty: qemu-nbd's default export). */
  url(exportName?: string): string;
  /** Kills it and waits until it is gone. */
  stop(): Promise<void>;
}

/** Starts `qemu-nbd --fork -k SOCKET ...args IMAGE`; args choose the format, -t, -e, -B, -r and so on. */
export async function startQemuNbd(t: Teardownable, dir: string, image: string, args: string[]): Promise<QemuNbd> {
  const socket = path.join(dir, `qemu-nbd-${path.basename(image)}.sock`);
  const pidFile = `${socket}.pid`;
  await runOk('qemu-nbd', ['--fork', '--pid-file', pidFile, '-k', socket, ...args, image], { timeoutMs: 20_000 });
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  let running = true;
  const stop = async (): Promise<void> => {
    if (!running) return;
    running = false;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return; // already gone
    }
    // Its pid file goes away as it exits; poll the process itself, which is not our child.
    for (;;) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  t.teardown(stop);
  return {
    socket,
    url: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`,
    stop,
  };
}
