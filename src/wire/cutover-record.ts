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
import * as v from 'valibot';
import type { ByteRange } from './messages';
import { issueKeys, PARSE_CONFIG } from '../util/schema-issues';
import { syncDirectory, syncDirectoryOf } from '../util/sync-directory';

const count = v.pipe(v.number(), v.safeInteger(), v.minValue(0));
const positive = v.pipe(v.number(), v.safeInteger(), v.gtValue(0));
const rangePair = v.strictTuple([count, positive]);

const SessionRecord = v.strictObject({
  blockSize: positive,
  /** The session's tracking epoch, reported again after a restart. */
  epoch: v.pipe(v.string(), v.minLength(1)),
  /** The CUTOVER's sequence number, acknowledged by DIRTY_ACK. */
  seq: positive,
  /** The final write set, [offset, length] pairs, ascending. */
  ranges: v.array(rangePair),
  /** The destination acknowledged the set: it is the authority now. */
  acked: v.boolean(),
});

const RecordSchema = v.strictObject({
  version: v.literal(1),
  image: v.string(),
  identity: v.string(),
  imageSize: count,
  fencedAt: v.string(),
  sessions: v.record(v.string(), SessionRecord),
});

export type CutoverSessionRecord = v.InferOutput<typeof SessionRecord>;
export type CutoverRecord = v.InferOutput<typeof RecordSchema>;

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
  const parsed = v.safeParse(RecordSchema, value, PARSE_CONFIG);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    throw new Error(`cutover record ${file} is damaged: ${issueKeys(issue).join('.') || '(top)'}: ${issue.message}`);
  }
  return parsed.output;
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
