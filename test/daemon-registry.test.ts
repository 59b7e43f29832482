/**
 * The registry file: a saved body loads back as it was; an interrupted save
 * leaves the previous registry; a damaged, truncated, foreign or newer file
 * is refused with the reason, never loaded.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import * as v from 'valibot';
import { MigrationSpec } from '../src/config/daemon-schema';
import { decodeRegistry, encodeRegistry, RegistryFile, type RegistryBody } from '../src/daemon/registry-file';
import { parseMigrationSpec, sameMigration } from '../src/daemon/migration-spec';
import { issueKeys } from '../src/util/schema-issues';
import { tempDir } from './helpers/temp-dir';

function body(generation: number, names: string[]): RegistryBody {
  return {
    generation,
    retired: [],
    ended: [],
    migrations: names.map((name) => ({
      spec: v.parse(MigrationSpec, {
        name,
        disk: [{ name: 'vda', source: 'ferry://src:10810/vda', image: `/images/${name}-vda.img` }],
      }),
      stage: 'started',
      paused: false,
      origin: 'control',
      createdAt: '2026-01-01T00:00:00.000Z',
      cutoverAt: null,
    })),
  };
}

t.test('save then load gives the same body; no registry yet is an empty one', async (t) => {
  const dir = tempDir(t);
  const file = new RegistryFile(path.join(dir, 'state'));
  t.same(file.load(), { generation: 0, migrations: [], retired: [], ended: [] });
  const b = body(3, ['vm1', 'vm2']);
  file.save(b);
  t.same(new RegistryFile(path.join(dir, 'state')).load(), b);
  file.save(body(4, ['vm2']));
  t.same(
    file.load().migrations.map((m) => m.spec.name),
    ['vm2'],
  );
  t.same(fs.readdirSync(path.join(dir, 'state')), ['registry.json'], 'no temp file is left behind');
});

t.test('a temp file left by a crash mid-save is removed unread; the last saved registry loads', async (t) => {
  const dir = tempDir(t);
  const file = new RegistryFile(dir);
  file.save(body(1, ['vm1']));
  const half = encodeRegistry(body(2, ['vm1', 'vm2']));
  fs.writeFileSync(path.join(dir, 'registry.json.tmp-123-abcd'), half.slice(0, half.length >> 1));
  t.same(
    file.load().migrations.map((m) => m.spec.name),
    ['vm1'],
  );
  t.same(fs.readdirSync(dir), ['registry.json']);
});

t.test('every truncation and a flipped byte are refused, never loaded', async (t) => {
  const text = encodeRegistry(body(7, ['vm1', 'vm2']));
  for (let n = 0; n < text.length - 1; n += 7)
    t.throws(() => decodeRegistry(text.slice(0, n), 'r.json'), /refusing to load it/, `cut at ${n}`);
  // A digit of the image path changed: still valid JSON, but the checksum says no.
  const flipped = text.replace('vm2-vda', 'vm3-vda');
  t.throws(() => decodeRegistry(flipped, 'r.json'), /does not match its checksum/);
  t.throws(() => decodeRegistry('{"hello":1}', 'r.json'), /not a ferryd registry/);
  const newer = JSON.parse(text) as Record<string, unknown>;
  newer.version = 2;
  t.throws(() => decodeRegistry(JSON.stringify(newer), 'r.json'), /registry version 2; this ferryd reads version 1/);
  t.same(decodeRegistry(text, 'r.json'), body(7, ['vm1', 'vm2']));
});

t.test('a damaged file on disk stops the load with the path and the reason', async (t) => {
  const dir = tempDir(t);
  const file = new RegistryFile(dir);
  file.save(body(1, ['vm1']));
  const text = fs.readFileSync(file.path, 'utf8');
  fs.writeFileSync(file.path, text.slice(0, 40));
  t.throws(() => file.load(), new RegExp(`${file.path.replace(/[.]/g, '\\.')} is not valid JSON`));
});

t.test('specs: disks and cutover make a migration; names, repeats and shared images are checked', async (t) => {
  const a = v.parse(MigrationSpec, { name: 'vm1', disk: [{ name: 'vda', source: 'nbd://h/x', image: '/i/a' }] });
  t.ok(sameMigration(a, { ...a, rate: 5, weight: 3 }), 'rate and weight do not make another migration');
  t.notOk(sameMigration(a, { ...a, disk: [{ ...a.disk[0], image: '/i/b' }] }));
  t.notOk(v.safeParse(MigrationSpec, { name: '../etc', disk: [{ name: 'vda', source: 'x', image: 'y' }] }).success);
  const repeated = v.safeParse(MigrationSpec, {
    name: 'vm',
    disk: [
      { name: 'vda', source: 'x', image: '/a' },
      { name: 'vda', source: 'y', image: '/a' },
    ],
  });
  t.notOk(repeated.success);
  if (!repeated.success)
    t.same(repeated.issues.map((i) => issueKeys(i).join('.')).sort(), ['disk.1.image', 'disk.1.name']);
  t.notOk(v.safeParse(MigrationSpec, { name: 'vm', disk: [] }).success, 'a migration has at least one disk');
});

t.test('a spec sent to create is refused naming the key and what it must be', async (t) => {
  const disk = { name: 'vda', source: 'nbd://h/x', image: '/i/a' };
  const error = (raw: unknown): string => {
    const parsed = parseMigrationSpec(raw);
    if (parsed.ok) throw new Error(`expected ${JSON.stringify(raw)} to be refused`);
    return parsed.error;
  };
  t.same(parseMigrationSpec({ name: 'vm1', disk: [disk] }), {
    ok: true,
    spec: { name: 'vm1', rate: 0, weight: 1, start: false, cutover: 'manual', disk: [disk] },
  });
  t.equal(error({ name: 'vm1', disk: [disk], speed: 1, color: 2 }), 'spec: unknown key speed, color');
  t.equal(error({ name: 'vm1', disk: [{ ...disk, size: 1 }] }), 'disk.0: unknown key size');
  t.equal(error({ name: 'vm1', disk: [{ name: 'vda', image: '/i/a' }] }), 'disk.0.source: is missing');
  t.equal(error({ name: 'vm1', rate: -1, disk: [disk] }), 'rate: must be at least 0');
  t.equal(error({ name: 'vm1', weight: 0, disk: [disk] }), 'weight: must be greater than 0');
  t.equal(error({ name: 'vm1', cutover: 'now', disk: [disk] }), 'cutover: must be one of "manual", "at-start"');
  t.equal(error({ name: 'vm1', disk: [] }), 'disk: must have at least 1 item');
  t.match(error({ name: '../etc', disk: [disk] }), /^name: must be 1-64 letters/);
  t.equal(error({ name: 'vm1', disk: [disk, disk] }), 'disk.1.name: repeats "vda"');
  t.equal(error('vm1'), 'spec: must be an object');
});

t.test('a body that does not fit the schema is refused naming the field', async (t) => {
  const good = body(1, ['vm1']);
  const bad = (edit: (b: Record<string, unknown>) => void): string => {
    const b = JSON.parse(JSON.stringify(good)) as Record<string, unknown>;
    edit(b);
    try {
      decodeRegistry(encodeRegistry(b as RegistryBody), 'r.json');
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error('expected the body to be refused');
  };
  t.equal(
    bad((b) => (b.generation = -1)),
    'r.json: body.generation must be at least 0; refusing to load it',
  );
  t.equal(
    bad((b) => (b.extra = 1)),
    'r.json: body.extra is not a known key; refusing to load it',
  );
  t.equal(
    bad((b) => ((b.migrations as Array<Record<string, unknown>>)[0].stage = 'flying')),
    'r.json: body.migrations.0.stage must be one of "creating", "created", "started", "cutover", "aborting"; refusing to load it',
  );
});
