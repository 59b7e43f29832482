/**
 * The files of one disk of an aborted migration whose Migration is not open
 * (its source was down, or the daemon restarts mid-abort).
 */
import fs from 'node:fs';
import { creatingPath } from '../migrate/migration';

/**
 * Removes the image only when this daemon made it: its block map, or a
 * `.creating` record (a first start or an abort that was interrupted), is
 * next to it. Never a block device, never an image it refused to overwrite.
 * The image goes before the record, so a crash in between leaves the record
 * that lets the next attempt finish.
 */
export function removeDiskFilesIfOurs(image: string, statePath: string): void {
  const records = [statePath, creatingPath(statePath)].filter((p) => fs.existsSync(p));
  if (records.length === 0) return;
  try {
    if (fs.statSync(image).isFile()) fs.rmSync(image, { force: true });
  } catch {
    // already gone
  }
  for (const record of records) fs.rmSync(record, { force: true });
}
