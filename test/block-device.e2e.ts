/**
 * Block devices as images: `ferry serve`, `ferry source` and `ferry dest`
 * on loop devices, and the FileDevice layer's zeroing on a device that
 * holds another disk's bytes.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { FileDevice } from '../src/store/file-device';
import { NbdClient } from '../src/nbd/client';
import { NbdError } from '../src/nbd/client-requests';
import { CommandFlag } from '../src/nbd/protocol';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { loopDevice } from './helpers/loop-device';
import { patternBytes, tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const MiB = 1 << 20;

t.test('FileDevice takes its size from the device and zeroes unaligned ranges over old bytes', async (t) => {
  const dir = tempDir(t);
  const loop = loopDevice(t, dir, 8 * MiB);
  if (!loop) return;
  fs.writeFileSync(loop, patternBytes(8 * MiB, 7));
  const dev = FileDevice.open(loop);
  t.teardown(() => dev.close());
  t.equal(dev.size, 8 * MiB, 'size from the device, not fstat');
  t.ok(dev.isBlockDevice);
  t.ok(dev.canTrim, 'TRIM advertised (it zeroes)');
  t.throws(
    () => FileDevice.open(loop, { deviceSize: 9 * MiB }),
    /has 8388608 bytes, too small for an image of 9437184/,
  );
  const small = FileDevice.open(loop, { deviceSize: 3 * MiB + 512 });
  t.equal(small.size, 3 * MiB + 512, 'a larger device serves only the image size');
  await small.close();

  const zeroAt = async (offset: number, length: number): Promise<Buffer> => {
    const b = Buffer.alloc(length, 0xee);
    await dev.read(offset, b);
    return b;
  };
  await dev.zero(1000, 70_000, { fua: false, noHole: false, fastZero: false });
  t.ok((await zeroAt(1000, 70_000)).equals(Buffer.alloc(70_000)), 'unaligned punch reads as zeros');
  t.equal((await zeroAt(999, 1))[0], patternBytes(1000, 7)[999], 'the byte before is kept');
  t.ok((await zeroAt(71_000, 8)).equals(patternBytes(71_008, 7).subarray(71_000)), 'the bytes after are kept');
  await dev.zero(2 * MiB + 3, 5000, { fua: true, noHole: true, fastZero: false });
  t.ok((await zeroAt(2 * MiB + 3, 5000)).equals(Buffer.alloc(5000)), 'allocated zeros read as zeros');
  await dev.trim(4 * MiB + 100, MiB, false);
  t.ok((await zeroAt(4 * MiB + 100, MiB)).equals(Buffer.alloc(MiB)), 'a trim reads back as zeros, never old bytes');
  dev.punchHoleNow(6 * MiB, 4096);
  t.ok((await zeroAt(6 * MiB, 4096)).equals(Buffer.alloc(4096)), 'punchHoleNow zeroes');
  t.same(await dev.status(0, 8 * MiB), [{ length: 8 * MiB, flags: 0 }], 'a device reports all data');
});

t.test('ferry serve and ferry source serve a block device', async (t) => {
  const dir = tempDir(t);
  const loop = loopDevice(t, dir, 4 * MiB);
  if (!loop) return;
  const content = patternBytes(4 * MiB, 3);
  fs.writeFileSync(loop, content);

  const serve = await startFerry(t, ['serve', '--image', loop, '--export', 'd', '--listen', '127.0.0.1:0']);
  t.equal(serve.serving.size, 4 * MiB);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(serve) }, { exportName: 'd' });
  t.ok((await vm.read(MiB, MiB)).equals(content.subarray(MiB, 2 * MiB)), 'reads the device');
  await vm.write(0, Buffer.alloc(4096, 0x5a), true);
  await vm.close();
  await serve.stop();
  const head = Buffer.alloc(4096);
  const fd = fs.openSync(loop, 'r');
  fs.readSync(fd, head, 0, 4096, 0);
  fs.closeSync(fd);
  t.ok(head.equals(Buffer.alloc(4096, 0x5a)), 'a write lands on the device');

  const stateDir = path.join(dir, 'state');
  const source = await startFerry(t, [
    ...['source', '--image', loop, '--listen', '127.0.0.1:0', '--insecure'],
    ...['--state-dir', stateDir],
  ]);
  t.equal(source.serving.size, 4 * MiB);
  t.match(String(source.serving.identity), /^ferry-image:/);
  t.same(
    fs.readdirSync(stateDir),
    [`${loop.slice(1).replaceAll('/', '+')}.ferry-id`],
    'the identity is in the state directory',
  );
});

t.test('ferry dest migrates onto a block device holding old bytes, its state elsewhere', async (t) => {
  const dir = tempDir(t);
  const loop = loopDevice(t, dir, 12 * MiB);
  if (!loop) return;
  fs.writeFileSync(loop, patternBytes(12 * MiB, 9)); // another disk's bytes: none may survive in the image
  // A source with data and holes (which the destination holds as zeros without fetching).
  const srcPath = path.join(dir, 'src.img');
  const fd = fs.openSync(srcPath, 'w');
  fs.writeSync(fd, patternBytes(2 * MiB, 1), 0, 2 * MiB, 0);
  fs.writeSync(fd, patternBytes(MiB, 2), 0, MiB, 6 * MiB);
  fs.ftruncateSync(fd, 8 * MiB + 4096);
  fs.closeSync(fd);
  const expected = fs.readFileSync(srcPath);

  const source = await startFerry(t, [
    ...['source', '--image', srcPath, '--listen', '127.0.0.1:0', '--insecure'],
    ...['--state-dir', path.join(dir, 'source-state')],
  ]);
  const stateDir = path.join(dir, 'dest-state');
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, `[dest]\nstate_dir = ${JSON.stringify(stateDir)}\n`);
  const destArgs = [
    'dest',
    '--config',
    config,
    '--image',
    loop,
    '--listen',
    '127.0.0.1:0',
    '--insecure',
    '--cutover-at-start',
  ];
  const dest = await startFerry(t, [...destArgs, '--source', `ferry://127.0.0.1:${servingPort(source)}/src.img`]);
  const key = loop.slice(1).replaceAll('/', '+');
  t.equal(dest.serving.stateFile, path.join(stateDir, `${key}.ferry-state`), 'state in dest.state_dir');
  t.equal(dest.serving.control, path.join(stateDir, `${key}.ferry-ctl`), 'default control socket beside it');
  await dest.waitForLog(/^migration complete/);
  const status = await run(process.execPath, [
    FERRY,
    'ctl',
    '--image',
    loop,
    '--state',
    String(dest.serving.stateFile),
    'status',
    '--json',
  ]);
  t.equal(status.code, 0, status.stderr);
  t.equal(JSON.parse(status.stdout).state, 'complete', 'ferry ctl finds the control socket from --image/--state');
  t.equal(await dest.stop(), 0);

  const got = Buffer.alloc(expected.length);
  const dfd = fs.openSync(loop, 'r');
  fs.readSync(dfd, got, 0, got.length, 0);
  fs.closeSync(dfd);
  t.ok(got.equals(expected), 'the device holds the source image, its holes as zeros');

  // Resumed (complete) from the state directory: serves the device without a source.
  await source.stop();
  const again = await startFerry(t, destArgs);
  t.equal(again.serving.state, 'complete');
  const vm = await NbdClient.connect(
    { host: '127.0.0.1', port: servingPort(again) },
    { exportName: path.basename(loop) },
  );
  t.equal(vm.size, expected.length, 'the export has the source size, not the device size');
  t.ok((await vm.read(6 * MiB, MiB)).equals(expected.subarray(6 * MiB, 7 * MiB)));
  await vm.close();
});

t.test('an abort onto a block device removes the state and keeps the device', async (t) => {
  const dir = tempDir(t);
  const loop = loopDevice(t, dir, 4 * MiB);
  if (!loop) return;
  const srcPath = path.join(dir, 'src.img');
  fs.writeFileSync(srcPath, patternBytes(4 * MiB, 3));
  const source = await startFerry(t, [
    ...['source', '--image', srcPath, '--listen', '127.0.0.1:0', '--insecure'],
    ...['--state-dir', path.join(dir, 'source-state')],
  ]);
  const state = path.join(dir, 'dest.ferry-state');
  const dest = await startFerry(t, [
    ...['dest', '--image', loop, '--state', state, '--listen', '127.0.0.1:0', '--insecure'],
    ...['--source', `ferry://127.0.0.1:${servingPort(source)}/src.img`],
  ]);
  const abort = await run(process.execPath, [FERRY, 'ctl', '--image', loop, '--state', state, 'abort']);
  t.equal(abort.code, 0, abort.stderr);
  t.equal(await dest.exited, 0, 'ferry dest exits once aborted');
  t.ok(fs.statSync(loop).isBlockDevice(), 'the device node is still there');
  t.notOk(fs.existsSync(state), 'the state is removed');
  t.notOk(fs.existsSync(`${state}.creating`), 'and no record is left');
});

t.test('a WRITE_ZEROES that must allocate on a full file system answers ENOSPC and keeps the data', async (t) => {
  const dir = tempDir(t);
  const loop = loopDevice(t, dir, 8 * MiB);
  if (!loop) return;
  if (spawnSync('mkfs.ext4', ['-q', '-F', loop]).status !== 0) {
    t.plan(0, 'skipped: mkfs.ext4 failed on the loop device');
    return;
  }
  const mnt = path.join(dir, 'small');
  fs.mkdirSync(mnt);
  if (spawnSync('mount', [loop, mnt]).status !== 0) {
    t.plan(0, 'skipped: cannot mount the loop device');
    return;
  }
  t.teardown(() => void spawnSync('umount', ['-l', mnt]));
  // A 64 MiB image on a 6 MiB file system: sparse, so it fits until something allocates.
  const image = path.join(mnt, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 64 * MiB);
  const serve = await startFerry(t, ['serve', '--image', image, '--listen', '127.0.0.1:0']);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(serve) }, { exportName: '' });
  const data = patternBytes(MiB, 5);
  await vm.write(0, data);
  await vm.flush();
  const err = await vm.zero(8 * MiB, 32 * MiB, CommandFlag.NoHole).then(
    () => null,
    (e: NbdError) => e,
  );
  t.equal(err?.errno, 28, 'allocated zeros that do not fit: ENOSPC');
  t.ok((await vm.read(0, MiB)).equals(data), 'the data written before is intact');
  await vm.zero(2 * MiB, 4 * MiB); // a hole allocates nothing
  t.ok((await vm.read(2 * MiB, 4096)).equals(Buffer.alloc(4096)), 'a punched range still reads as zeros');
  await vm.close();
  t.equal(await serve.stop(), 0);
});
