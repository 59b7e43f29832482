/** External programs the interop tests drive, and skipping when one is absent. */
import { spawnSync } from 'node:child_process';

const found = new Map<string, boolean>();

export function hasTool(name: string): boolean {
  let present = found.get(name);
  if (present === undefined) {
    present = spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
    found.set(name, present);
  }
  return present;
}

interface Plannable {
  plan(count: number, comment?: string): void;
}

/** Skips the test (with the reason) unless every named tool is on PATH; returns whether they all are. */
export function requireTool(t: Plannable, ...names: string[]): boolean {
  const missing = names.filter((n) => !hasTool(n));
  if (missing.length === 0) return true;
  t.plan(0, `skipped: not installed: ${missing.join(', ')}`); // a plan of 0 marks the test skipped
  return false;
}

/**
 * Skips the test (with the reason) when the native addon is not built: hole
 * punching, SEEK_DATA/SEEK_HOLE and fast zeroing need it. Loaded on first use,
 * so that tests without this need do not load the addon.
 */
export function requireFileOps(t: Plannable): boolean {
  const { fileOps, fileOpsError } = require('../../src/store/fileops') as typeof import('../../src/store/fileops');
  if (fileOps) return true;
  t.plan(0, `skipped: native addon unavailable: ${fileOpsError}`);
  return false;
}
