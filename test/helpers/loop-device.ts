/**
 * A loop device over a sparse file, for tests of block-device images;
 * detached at teardown. Skips the test (with the reason) when not root or
 * the kernel has no loop support.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { hasTool } from './tools';

interface LoopTest {
  plan(count: number, comment?: string): void;
  teardown(fn: () => void | Promise<void>): void;
}

function unavailable(): string | null {
  if (process.getuid?.() !== 0) return 'loop devices need root';
  if (!hasTool('losetup')) return 'losetup is not installed';
  if (!fs.existsSync('/dev/loop-control')) return 'no loop device support (/dev/loop-control)';
  return null;
}

/** Attaches a new loop device over DIR/NAME (created sparse with `size` bytes); null when the test was skipped. */
export function loopDevice(t: LoopTest, dir: string, size: number, name = 'backing.img'): string | null {
  const reason = unavailable();
  if (reason) {
    t.plan(0, `skipped: ${reason}`);
    return null;
  }
  const backing = path.join(dir, name);
  fs.writeFileSync(backing, '');
  fs.truncateSync(backing, size);
  const r = spawnSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' });
  if (r.status !== 0) {
    t.plan(0, `skipped: losetup cannot attach a loop device: ${r.stderr.trim()}`);
    return null;
  }
  const device = r.stdout.trim();
  t.teardown(() => {
    spawnSync('losetup', ['-d', device]);
  });
  return device;
}
