/**
 * What the registry keeps of one migration: the spec it was created with
 * and where its lifecycle stands. Disk progress is not here: each disk's
 * block map holds it, made durable by the disk's own Migration.
 */
import path from 'node:path';
import * as v from 'valibot';
import { MigrationSpec } from '../config/daemon-schema';
import { STAGES } from './lifecycle';
import { issueKeys, PARSE_CONFIG, unknownKeys } from '../util/schema-issues';

export const MigrationRecord = v.strictObject({
  spec: MigrationSpec,
  stage: v.picklist(STAGES),
  /** The operator paused the background copy (kept across restarts). */
  paused: v.boolean(),
  /** Declared in the config file (a reload may change its rate and weight) or created over the control socket. */
  origin: v.picklist(['config', 'control']),
  createdAt: v.string(),
  /** When the cutover was asked for: from then on every disk is cut over, after any restart. */
  cutoverAt: v.nullable(v.string()),
});
export type MigrationRecord = v.InferOutput<typeof MigrationRecord>;

/** A disk's block map lives in the daemon's state directory, one folder per migration. */
export function migrationStateDir(stateDir: string, migration: string): string {
  return path.join(stateDir, 'migrations', migration);
}

export function diskStatePath(stateDir: string, migration: string, disk: string): string {
  return path.join(migrationStateDir(stateDir, migration), `${disk}.ferry-state`);
}

export { diskExportName } from '../config/daemon-schema';

/**
 * A spec sent over the control socket, checked like a [[migration]] of the
 * config file; the error names the key (unknown keys at the table that
 * holds them) and what it must be.
 */
export function parseMigrationSpec(raw: unknown): { ok: true; spec: MigrationSpec } | { ok: false; error: string } {
  const parsed = v.safeParse(MigrationSpec, raw, PARSE_CONFIG);
  if (parsed.success) return { ok: true, spec: parsed.output };
  const issue = parsed.issues[0];
  const keys = issueKeys(issue);
  const unknown = unknownKeys(MigrationSpec, issue);
  if (unknown.length > 0)
    return { ok: false, error: `${keys.slice(0, -1).join('.') || 'spec'}: unknown key ${unknown.join(', ')}` };
  return { ok: false, error: `${keys.join('.') || 'spec'}: ${issue.message}` };
}

/**
 * Two specs are the same migration when their disks and cutover mode are:
 * `create` twice with one spec is one migration (rate and weight are
 * changed with `rate`, not by creating again).
 */
export function sameMigration(a: MigrationSpec, b: MigrationSpec): boolean {
  const key = (s: MigrationSpec): string =>
    JSON.stringify([
      s.cutover,
      s.disk.map((d) => [d.name, d.source, d.image, d.export ?? null, d.block_size ?? null, d.dirty_bitmap ?? null]),
    ]);
  return key(a) === key(b);
}
