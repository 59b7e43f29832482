/** ferry serve driven by QEMU's own NBD client: qemu-img and qemu-io. */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startFerryServe } from './helpers/ferry-serve';
import { run, runOk } from './helpers/run';
import { patternBytes, tempDir, writePatternFile } from './helpers/temp-dir';
import { requireFileOps, requireTool } from './helpers/tools';

const MiB = 1 << 20;

t.test('qemu-img info reports the export size', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 48 * MiB + 512);
  const ferry = await startFerryServe(t, ['--image', image]);
  const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', ferry.uri('disk.img')])) as {
    'virtual-size': number;
    format: string;
  };
  t.equal(info['virtual-size'], 48 * MiB + 512);
  t.equal(info.format, 'raw');
});

t.test('qemu-img convert into and out of the export, then compare', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const dir = tempDir(t);
  const source = path.join(dir, 'source.img');
  const image = path.join(dir, 'served.img');
  const back = path.join(dir, 'back.img');
  const size = 24 * MiB;
  const content = writePatternFile(source, size, 7);
  // a zero run in the middle, so convert's zero detection is exercised too
  fs.writeSync(fs.openSync(source, 'r+'), Buffer.alloc(3 * MiB), 0, 3 * MiB, 5 * MiB);
  content.fill(0, 5 * MiB, 8 * MiB);
  fs.writeFileSync(image, '');
  fs.truncateSync(image, size);
  const ferry = await startFerryServe(t, ['--image', image]);

  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, ferry.uri()]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, ferry.uri()]);
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', ferry.uri(), back]);
  t.ok(fs.readFileSync(back).equals(content), 'image read back over NBD equals the source');

  // compare must notice a difference: change one byte behind the server's back
  const fd = fs.openSync(image, 'r+');
  fs.writeSync(fd, Buffer.from([content[12345] ^ 0xff]), 0, 1, 12345);
  fs.closeSync(fd);
  const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, ferry.uri()]);
  t.equal(differs.code, 1, 'qemu-img compare reports the changed byte');
  t.match(differs.stdout, /offset 12288|differ/i);
});

t.test('qemu-io: unaligned patterns, zeroes, discard, flush, FUA', async (t) => {
  if (!requireTool(t, 'qemu-io') || !requireFileOps(t)) return; // discard needs TRIM
  const dir = tempDir(t);
  const image = path.join(dir, 'io.img');
  const size = 8 * MiB;
  const initial = patternBytes(size, 3);
  fs.writeFileSync(image, initial);
  const ferry = await startFerryServe(t, ['--image', image]);
  const commands = [
    'write -P 0xa5 1000 5000',
    'read -P 0xa5 1000 5000',
    'write -P 0x3c 65535 131075',
    'read -P 0x3c 65535 131075',
    'write -z 1048577 70000',
    'read -P 0 1048577 70000',
    'discard 2097152 1048576',
    'read -P 0 2097152 1048576',
    'flush',
    'write -f -P 0x77 4194307 12345',
    'read -P 0x77 4194307 12345',
    'write -P 0x11 8388000 608',
    'read -P 0x11 8388000 608',
  ];
  const out = await runOk('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), ferry.uri()]);
  t.notMatch(out, /Pattern verification failed|error|failed/i, 'qemu-io verified every pattern');
  t.equal(out.match(/^read /gm)?.length, 6, 'every read ran');

  // The bytes reached the image itself, and nothing around them changed.
  const expected = Buffer.from(initial);
  expected.fill(0xa5, 1000, 6000);
  expected.fill(0x3c, 65535, 65535 + 131075);
  expected.fill(0, 1048577, 1048577 + 70000);
  expected.fill(0, 2097152, 3145728);
  expected.fill(0x77, 4194307, 4194307 + 12345);
  expected.fill(0x11, 8388000, 8388608);
  t.ok(fs.readFileSync(image).equals(expected), 'image file holds exactly the writes');

  const bad = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 1000 5000', ferry.uri()]);
  t.match(bad.stdout + bad.stderr, /Pattern verification failed/, 'a wrong pattern is detected');
});
