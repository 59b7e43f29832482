/**
 * A destination killed during its first start (creating the image and the
 * state) restarts: the state takes its name only once the image exists, so a
 * restart finds either a whole migration or a `.creating` record that says
 * the image is the interrupted start's to remove.
 */
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { creatingPath, Migration, type MigrationOptions } from '../src/migrate/migration';
import { lockImage } from '../src/store/image-lock';
import { FakeUpstream } from './helpers/fake-upstream';
import { tempDir } from './helpers/temp-dir';

const log = pino({ level: 'silent' });
const BS = 4096;

function options(dir: string, source: FakeUpstream): MigrationOptions {
  return {
    imagePath: path.join(dir, 'img'),
    statePath: path.join(dir, 'img.ferry-state'),
    sourceUrl: 'fake://source',
    blockSize: BS,
    fetchTimeoutMs: 30_000,
    persistIntervalMs: 1000,
    rateLimit: null,
    copy: { batchBlocks: 4, windowBytes: 8 * BS, storeErrorBackoffMs: 100 },
    openUpstream: async () => source,
  };
}

async function startsAfresh(t: Test, dir: string, content: Buffer): Promise<void> {
  const o = options(dir, new FakeUpstream(content));
  const m = await Migration.open(o, log);
  t.notOk(fs.existsSync(creatingPath(o.statePath)), 'no .creating record is left');
  t.ok(fs.existsSync(o.statePath), 'the state has its name');
  t.equal(fs.statSync(o.imagePath).size, content.length, 'the image has the source size');
  const got = Buffer.alloc(BS);
  await m.device.read(BS, got);
  t.ok(got.equals(content.subarray(BS, 2 * BS)), 'reads come from the source');
  await m.close();
}

t.test('a new migration leaves no .creating record', async (t) => {
  await startsAfresh(t, tempDir(t), crypto.randomBytes(16 * BS));
});

t.test('killed after the .creating record, before the image: the restart starts afresh', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(creatingPath(path.join(dir, 'img.ferry-state')), ''); // opened, nothing written yet
  await startsAfresh(t, dir, crypto.randomBytes(16 * BS));
});

t.test('killed after the image was created, before the state took its name: the restart starts afresh', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(creatingPath(path.join(dir, 'img.ferry-state')), Buffer.alloc(8192, 7));
  fs.writeFileSync(path.join(dir, 'img'), ''); // created, not yet sized
  await startsAfresh(t, dir, crypto.randomBytes(16 * BS));
});

t.test('a .creating record another start holds is not undone', async (t) => {
  const dir = tempDir(t);
  const creating = creatingPath(path.join(dir, 'img.ferry-state'));
  fs.writeFileSync(creating, '');
  fs.writeFileSync(path.join(dir, 'img'), 'theirs');
  const release = lockImage(creating, 'exclusive');
  t.teardown(release);
  await t.rejects(Migration.open(options(dir, new FakeUpstream(crypto.randomBytes(4 * BS))), log), /is in use by/);
  t.equal(fs.readFileSync(path.join(dir, 'img'), 'utf8'), 'theirs', 'their image is kept');
});

t.test('an image with no state and no .creating record is still refused', async (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, 'img'), 'precious');
  await t.rejects(
    Migration.open(options(dir, new FakeUpstream(crypto.randomBytes(4 * BS))), log),
    /exists but has no migration state .* remove it or choose another --image/,
  );
  t.equal(fs.readFileSync(path.join(dir, 'img'), 'utf8'), 'precious');
});
