/**
 * The daemon's migrations on disk: one JSON file replaced atomically (a temp
 * file written and fsynced, renamed over the old one, the directory fsynced),
 * so a crash leaves the old registry or the new one, never a mix. The file
 * carries its format version and a checksum of its body: a file that does
 * not check out (a disk that lied, a hand edit gone wrong) is refused with
 * the reason, never loaded as garbage.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as v from 'valibot';
import { MigrationRecord } from './migration-spec';
import { issueKeys, PARSE_CONFIG } from '../util/schema-issues';
import { syncDirectory } from '../util/sync-directory';

export const REGISTRY_FORMAT = 'ferryd-registry';
export const REGISTRY_VERSION = 1;
const FILE_NAME = 'registry.json';
const TEMP_PREFIX = `${FILE_NAME}.tmp-`;

export class RegistryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RegistryError';
  }
}

const RegistryBody = v.strictObject({
  /** Raised by every write: which of two copies is newer, and a sign of progress in logs. */
  generation: v.pipe(v.number(), v.safeInteger(), v.minValue(0)),
  migrations: v.array(MigrationRecord),
  /** Declared migrations that were aborted or forgotten: the config file does not create them again. */
  retired: v.array(v.string()),
  /** Migrations aborted or forgotten lately: asking again answers what happened (the verbs are idempotent). */
  ended: v.array(v.strictObject({ name: v.string(), verb: v.picklist(['abort', 'forget']), at: v.string() })),
});
export type RegistryBody = v.InferOutput<typeof RegistryBody>;

const Envelope = v.strictObject({
  format: v.literal(REGISTRY_FORMAT),
  version: v.pipe(v.number(), v.safeInteger()),
  sha256: v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/)),
  body: v.unknown(),
});

function checksum(body: unknown): string {
  return crypto.createHash('sha256').update(JSON.stringify(body)).digest('hex');
}

/** The envelope's text for a body: pure, so tests can corrupt it byte by byte. */
export function encodeRegistry(body: RegistryBody): string {
  return JSON.stringify({ format: REGISTRY_FORMAT, version: REGISTRY_VERSION, sha256: checksum(body), body }) + '\n';
}

/** Parses a registry file's text; throws a RegistryError that says what is wrong. */
export function decodeRegistry(text: string, where: string): RegistryBody {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new RegistryError(`${where} is not valid JSON (${(e as Error).message}); refusing to load it`);
  }
  const envelope = v.safeParse(Envelope, value);
  if (!envelope.success) throw new RegistryError(`${where} is not a ferryd registry; refusing to load it`);
  const { version, sha256, body } = envelope.output;
  if (version !== REGISTRY_VERSION)
    throw new RegistryError(
      `${where} has registry version ${version}; this ferryd reads version ${REGISTRY_VERSION} (use the ferry that wrote it)`,
    );
  if (checksum(body) !== sha256)
    throw new RegistryError(`${where} does not match its checksum (damaged or edited); refusing to load it`);
  const parsed = v.safeParse(RegistryBody, body, PARSE_CONFIG);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    throw new RegistryError(`${where}: body.${issueKeys(issue).join('.')} ${issue.message}; refusing to load it`);
  }
  return parsed.output;
}

export class RegistryFile {
  readonly path: string;

  constructor(readonly dir: string) {
    this.path = path.join(dir, FILE_NAME);
  }

  /** The saved registry, or an empty one when none was ever written. Leftover temp files are removed unread. */
  load(): RegistryBody {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (const entry of fs.readdirSync(this.dir))
      if (entry.startsWith(TEMP_PREFIX)) fs.rmSync(path.join(this.dir, entry), { force: true });
    let text: string;
    try {
      text = fs.readFileSync(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT')
        return { generation: 0, migrations: [], retired: [], ended: [] };
      throw new RegistryError(`cannot read ${this.path}: ${(e as Error).message}`);
    }
    return decodeRegistry(text, this.path);
  }

  /** Replaces the registry durably: when this returns, a crash leaves this body. */
  save(body: RegistryBody): void {
    const temp = path.join(this.dir, `${TEMP_PREFIX}${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
    const fd = fs.openSync(temp, 'wx', 0o600);
    try {
      fs.writeSync(fd, encodeRegistry(body));
      fs.fsyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(temp, { force: true });
      throw e;
    }
    fs.closeSync(fd);
    try {
      fs.renameSync(temp, this.path);
    } catch (e) {
      fs.rmSync(temp, { force: true });
      throw e;
    }
    // The rename is durable only once the directory entry is.
    syncDirectory(this.dir);
  }
}
