/**
 * The destination with real clients while it migrates from nbdkit made slow
 * by its delay and rate filters: qemu-io patterns, fio with verification,
 * and qemu-img compare of the final image.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { servingPort, startFerry } from './helpers/ferry-daemon';
import { startNbdkit } from './helpers/nbdkit';
import { requireTool } from './helpers/tools';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { run } from './helpers/run';

const SIZE = 32 << 20;

t.test('qemu-io, fio and qemu-img against a destination migrating from a slow nbdkit', async (t) => {
  if (!requireTool(t, 'nbdkit', 'qemu-io', 'qemu-img', 'fio')) return;
  const dir = tempDir(t, 'ferry-dest-interop-');
  const sourcePath = path.join(dir, 'source.img');
  const source = writePatternFile(sourcePath, SIZE, 7);
  // 2 ms per read and 20 Mbit/s: a small WAN.
  const port = await startNbdkit(t, ['--filter=delay', '--filter=rate', 'file', sourcePath, 'rdelay=2ms', 'rate=20M']);
  const image = path.join(dir, 'dest.img');
  const dest = await startFerry(t, [
    'dest',
    '--cutover-at-start',
    '--source',
    `nbd://127.0.0.1:${port}/`,
    '--image',
    image,
    '--listen',
    '127.0.0.1:0',
  ]);
  const uri = `nbd://127.0.0.1:${servingPort(dest)}/dest.img`;
  const expected = Buffer.from(source);

  // qemu-io: unaligned writes, zeroes and reads verified against patterns, while blocks are still missing.
  const io = await run(
    'qemu-io',
    [
      ...['-f', 'raw', uri],
      ...['-c', 'read -v 0 16'],
      ...['-c', 'write -P 0x5a 1000 70000'],
      ...['-c', 'read -P 0x5a 1000 70000'],
      ...['-c', 'write -z 3000000 100000'],
      ...['-c', 'read -P 0 3000000 100000'],
      ...['-c', 'write -f -P 0xc3 20000001 12345'],
      ...['-c', 'read -P 0xc3 20000001 12345'],
      ...['-c', 'flush'],
    ],
    { timeoutMs: 60_000 },
  );
  const ioDoneAt = Date.now();
  t.equal(io.code, 0, `qemu-io succeeded: ${io.stderr}`);
  t.notMatch(io.stdout, /Pattern verification failed/);
  expected.fill(0x5a, 1000, 71000);
  expected.fill(0, 3000000, 3100000);
  expected.fill(0xc3, 20000001, 20012346);
  // The first 16 bytes qemu-io printed come from the source.
  const hex = [...source.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
  t.match(io.stdout, hex, 'read of a missing block returns the source content');

  // fio: random writes then verification, in a region of its own.
  const fio = await run(
    'fio',
    [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--offset=24M',
      '--size=4M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
    ],
    { timeoutMs: 120_000 },
  );
  t.equal(fio.code, 0, `fio verify passed: ${fio.stderr.slice(-500)}`);
  t.match(fio.stdout, /err= 0/);

  const complete = await dest.waitForLog('migration complete: every block held, source disconnected', 120_000);
  t.ok(Number(complete.time) > ioDoneAt, 'the clients ran while the migration was still going on');
  t.equal(await dest.stop(), 0);
  // fio's region holds fio's own (verified) data; take it as expected.
  const final = fs.readFileSync(image);
  final.copy(expected, 24 << 20, 24 << 20, 28 << 20);
  const expectedPath = path.join(dir, 'expected.img');
  fs.writeFileSync(expectedPath, expected);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expectedPath, image], { timeoutMs: 60_000 });
  t.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
});
