/**
 * The files of an aborted disk whose migration is not open: removed only when
 * this daemon made them, and an abort interrupted between its steps is
 * finished by the next attempt.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { removeDiskFilesIfOurs } from '../src/daemon/disk-files';
import { creatingPath } from '../src/migrate/migration';
import { tempDir } from './helpers/temp-dir';

t.test('image and block map are removed together', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'vda.img');
  const state = path.join(dir, 'vda.ferry-state');
  fs.writeFileSync(image, 'image');
  fs.writeFileSync(state, 'state');
  removeDiskFilesIfOurs(image, state);
  t.notOk(fs.existsSync(image));
  t.notOk(fs.existsSync(state));
});

t.test('an abort record (the state renamed before the image went) still removes the image', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'vda.img');
  const state = path.join(dir, 'vda.ferry-state');
  fs.writeFileSync(image, 'image');
  fs.writeFileSync(creatingPath(state), 'state');
  removeDiskFilesIfOurs(image, state);
  t.notOk(fs.existsSync(image), 'image removed');
  t.notOk(fs.existsSync(creatingPath(state)), 'record removed');
});

t.test('the record outlives the image: a crash after the image went is finished next time', async (t) => {
  const dir = tempDir(t);
  const state = path.join(dir, 'vda.ferry-state');
  fs.writeFileSync(creatingPath(state), 'state');
  removeDiskFilesIfOurs(path.join(dir, 'gone.img'), state);
  t.notOk(fs.existsSync(creatingPath(state)));
});

t.test('an image with no record of ours is never removed', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'vda.img');
  fs.writeFileSync(image, 'somebody else’s data');
  removeDiskFilesIfOurs(image, path.join(dir, 'vda.ferry-state'));
  t.equal(fs.readFileSync(image, 'utf8'), 'somebody else’s data');
});

t.test('a path that is not a regular file is left alone (a block device is never unlinked)', async (t) => {
  const dir = tempDir(t);
  const notAFile = path.join(dir, 'device');
  fs.mkdirSync(notAFile);
  const state = path.join(dir, 'vda.ferry-state');
  fs.writeFileSync(state, 'state');
  removeDiskFilesIfOurs(notAFile, state);
  t.ok(fs.existsSync(notAFile), 'kept');
  t.notOk(fs.existsSync(state), 'the block map is removed');
});
