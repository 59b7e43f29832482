/** nbdkit as a test's NBD source: read-only on a free loopback port, killed at teardown. */
import { spawn } from 'node:child_process';
import { freePort } from './ferry-daemon';
import { run } from './run';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

/**
 * Starts `nbdkit -f -r -i 127.0.0.1 -p PORT ...args` and resolves with the
 * port once nbdinfo gets an answer from it (about 5 s at most).
 */
export async function startNbdkit(t: Teardownable, args: string[]): Promise<number> {
  const port = await freePort();
  const nbdkit = spawn('nbdkit', ['-f', '-r', '-i', '127.0.0.1', '-p', String(port), ...args], { stdio: 'ignore' });
  t.teardown(() => void nbdkit.kill('SIGKILL'));
  for (let i = 0; i < 100; i++) {
    const probe = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}`], { timeoutMs: 5000 }).catch(() => null);
    if (probe?.code === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return port;
}
