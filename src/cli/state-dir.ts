/**
 * Where ferry keeps what belongs to an image but cannot live beside it: the
 * destination's state when its image is a block device, the source's image
 * identity. systemd's $STATE_DIRECTORY (StateDirectory=ferry) if set; else
 * /var/lib/ferry for root and $XDG_STATE_HOME/ferry (~/.local/state/ferry)
 * for anyone else.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export function defaultStateDir(): string {
  if (process.env.STATE_DIRECTORY) return process.env.STATE_DIRECTORY.split(':')[0];
  if (process.getuid?.() === 0) return '/var/lib/ferry';
  const base = process.env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'ferry');
}

import { imageKey } from '../wire/image-identity';

export { imageKey };

/** Creates the state directory (mode 0700: it names the images ferry handles) if needed. */
export function ensureStateDir(dir: string): string {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(`cannot create the state directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return dir;
}

export function isBlockDevicePath(p: string): boolean {
  try {
    return fs.statSync(p).isBlockDevice();
  } catch {
    return false;
  }
}

/** The destination's block map: beside a file image; in the state directory for a block device. */
export function destStatePath(image: string, stateDir: string | undefined): string {
  if (!isBlockDevicePath(image)) return `${image}.ferry-state`;
  return path.join(stateDir ?? defaultStateDir(), `${imageKey(image)}.ferry-state`);
}

/** The destination's control socket by default: beside its state file. */
export function destControlPath(statePath: string): string {
  return statePath.endsWith('.ferry-state')
    ? `${statePath.slice(0, -'.ferry-state'.length)}.ferry-ctl`
    : `${statePath}.ctl`;
}
