/**
 * The source image's identity: kept in the state directory (nothing is
 * written beside the image, whose directory may be read-only), stable while
 * the same file is served, new when another file takes its path.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { imageIdentity } from '../src/wire/image-identity';
import { imageKey } from '../src/cli/state-dir';
import { startFerry } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';

t.test('stable for the same file, new for a replaced one, an old IMAGE.ferry-id adopted', async (t) => {
  const dir = tempDir(t);
  const state = path.join(dir, 'state');
  fs.mkdirSync(state);
  const image = path.join(dir, 'images', 'disk.img');
  fs.mkdirSync(path.dirname(image));
  fs.writeFileSync(image, Buffer.alloc(8192));
  const key = imageKey(image);
  t.equal(key, `${image.slice(1).replaceAll('/', '+')}`, 'the key spells the path');
  t.not(imageKey('/a+b/c'), imageKey('/a/b/c'), 'keys are one to one');

  const first = imageIdentity(image, state, key);
  t.match(first, /^ferry-image:[0-9a-f-]{36}$/);
  fs.appendFileSync(image, Buffer.alloc(4096, 1)); // written in place: the same image
  t.equal(imageIdentity(image, state, key), first, 'stable for the same file');
  t.same(fs.readdirSync(path.dirname(image)), ['disk.img'], 'nothing beside the image');

  fs.rmSync(image);
  fs.writeFileSync(`${image}.new`, Buffer.alloc(8192));
  fs.renameSync(`${image}.new`, image); // another file at the same path
  const second = imageIdentity(image, state, key);
  t.not(second, first, 'a replaced image gets a new identity');
  t.equal(imageIdentity(image, state, key), second);

  const legacy = path.join(dir, 'images', 'old.img');
  fs.writeFileSync(legacy, Buffer.alloc(4096));
  const recorded = 'ferry-image:0f0e0d0c-0b0a-4908-8706-050403020100';
  fs.writeFileSync(`${legacy}.ferry-id`, recorded + '\n');
  t.equal(imageIdentity(legacy, state, imageKey(legacy)), recorded, 'an identity kept beside the image is adopted');

  fs.writeFileSync(path.join(state, `${key}.ferry-id`), 'garbage');
  t.throws(() => imageIdentity(image, state, key), /does not hold a ferry image identity \(remove it/);
});

t.test('ferry source serves an image in a read-only directory', async (t) => {
  const dir = tempDir(t);
  const ro = path.join(dir, 'ro');
  fs.mkdirSync(ro);
  // A read-only mount, since root ignores directory permissions.
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', ro]).status === 0;
  if (!mounted) {
    t.plan(0, 'skipped: cannot mount a tmpfs (needs root)');
    return;
  }
  t.teardown(() => void spawnSync('umount', [ro]));
  fs.writeFileSync(path.join(ro, 'disk.img'), Buffer.alloc(1 << 20, 7));
  t.equal(spawnSync('mount', ['-o', 'remount,ro', ro]).status, 0, 'remounted read-only');
  t.throws(() => fs.writeFileSync(path.join(ro, 'probe'), ''), /EROFS/, 'the directory is read-only');

  const state = path.join(dir, 'state');
  const args = ['source', '--image', path.join(ro, 'disk.img'), '--listen', '127.0.0.1:0', '--insecure'];
  const a = await startFerry(t, [...args, '--state-dir', state]);
  const identity = a.serving.identity;
  t.match(String(identity), /^ferry-image:/);
  t.equal(await a.stop(), 0);
  const b = await startFerry(t, [...args, '--state-dir', state]);
  t.equal(b.serving.identity, identity, 'the same identity on the next start');
  t.equal(await b.stop(), 0);
});
