/**
 * The source's cutover record: written (and fsynced) when the source fences
 * itself, before any destination hears the final write set, so a restarted
 * source is still fenced and answers with the same set. Removing it (ferry
 * ctl unfence, or deleting the file) is how an abandoned migration gives the
 * VM its disk back.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { ByteRange } from './messages';
import { syncDirectory, syncDirectoryOf } from '../util/sync-directory';

const rangePair = z.tuple([z.number().int().min(0), z.number().int().positive()]);

const SessionRecord = z
  .object({
    blockSize: z.number().int().positive(),
    /** The session's tracking epoch, reported again after a restart. */
    epoch: z.string().min(1),
    /** The CUTOVER's sequence number, acknowledged by DIRTY_ACK. */
    seq: z.number().int().positive(),
    /** The final write set, [offset, length] pairs, ascending. */
    ranges: z.array(rangePair),
    /** The destination acknowledged the set: it is the authority now. */
    acked: z.boolean(),
  })
  .strict();

const RecordSchema = z
  .object({
    version: z.literal(1),
    image: z.string(),
    identity: z.string(),
    imageSize: z.number().int().min(0),
    fencedAt: z.string(),
    sessions: z.record(z.string(), SessionRecord),
  })
  .strict();

export type CutoverSessionRecord = z.infer<typeof SessionRecord>;
export type CutoverRecord = z.infer<typeof RecordSchema>;

/** /var/lib/ferry for root; else $XDG_STATE_HOME/ferry or ~/.local/state/ferry. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? -1): string {
  if (uid === 0) return '/var/lib/ferry';
  const base = env.XDG_STATE_HOME && path.isAbsolute(env.XDG_STATE_HOME) ? env.XDG_STATE_HOME : null;
  return path.join(base ?? path.join(os.homedir(), '.local', 'state'), 'ferry');
}

/** One record per image: its base name for people, a hash of its real path to keep two images apart. */
export function cutoverRecordPath(stateDir: string, imagePath: string): string {
  let real = path.resolve(imagePath);
  try {
    real = fs.realpathSync(imagePath);
  } catch {
    // an image that does not exist has no record; its resolved path names it
  }
  const hash = crypto.createHash('sha256').update(real).digest('hex').slice(0, 12);
  const name = path.basename(real).replace(/[^A-Za-z0-9._-]/g, '_');
  return path.join(stateDir, `source-${name}-${hash}.cutover.json`);
}

/** The record, or null when there is none; throws naming the file when it is damaged. */
export function readCutoverRecord(file: string): CutoverRecord | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read cutover record ${file}: ${(e as Error).message}`, { cause: e });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`cutover record ${file} is not valid JSON (${(e as Error).message}); the source stays down`, {
      cause: e,
    });
  }
  const parsed = RecordSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`cutover record ${file} is damaged: ${issue.path.join('.') || '(top)'}: ${issue.message}`);
  }
  return parsed.data;
}

/** Writes the record durably: a temporary file, fsync, rename over the old one, fsync of the directory. */
export function writeCutoverRecord(file: string, record: CutoverRecord): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, JSON.stringify(record) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  syncDirectory(dir);
}

/** Removes the record durably. */
export function removeCutoverRecord(file: string): void {
  fs.rmSync(file, { force: true });
  syncDirectoryOf(file);
}

export function rangesToPairs(ranges: readonly ByteRange[]): Array<[number, number]> {
  return ranges.map((r) => [r.offset, r.length]);
}

export function pairsToRanges(pairs: ReadonlyArray<readonly [number, number]>): ByteRange[] {
  return pairs.map(([offset, length]) => ({ offset, length }));
}
