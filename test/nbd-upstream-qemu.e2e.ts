/**
 * The plain-NBD upstream against qemu-nbd: its holes (base:allocation, which
 * qemu-nbd 7.2 negotiates as meta context id 0), reconnects after the source
 * VM wrote a block the old content-sampled identity read, the checks that
 * still refuse another image, and close() ending the reconnect loop.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import pino from 'pino';
import { NbdUpstream, DEFAULT_NBD_UPSTREAM_OPTIONS } from '../src/upstream/nbd-upstream';
import { NbdClient } from '../src/nbd/client';
import { BASE_ALLOCATION } from '../src/nbd/protocol';
import { parseNbdUrl } from '../src/nbd/url';
import { requireTool } from './helpers/tools';
import { patternBytes, tempDir } from './helpers/temp-dir';
import { startQemuNbd } from './helpers/qemu-nbd';
import type { ZeroRangeAnswer } from '../src/upstream/upstream';

const log = pino({ level: 'silent' });
const MiB = 1 << 20;
const options = { ...DEFAULT_NBD_UPSTREAM_OPTIONS, minBackoffMs: 20, maxBackoffMs: 200 };

/** A sparse raw image with data at [1 MiB, 2 MiB) and [5 MiB, 5 MiB + 4 KiB). */
function sparseImage(file: string, size: number): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, patternBytes(MiB, 3), 0, MiB, MiB);
  fs.writeSync(fd, patternBytes(4096, 4), 0, 4096, 5 * MiB);
  fs.closeSync(fd);
}

t.test('qemu-nbd serving a sparse raw image: its zero ranges are reported (meta context id 0 counts)', async (t) => {
  if (!requireTool(t, 'qemu-nbd')) return;
  const dir = tempDir(t, 'ferry-nbd-qemu-');
  const image = path.join(dir, 'sparse.img');
  const size = 8 * MiB;
  sparseImage(image, size);
  const nbd = await startQemuNbd(t, dir, image, ['-f', 'raw', '-r', '-t', '-e', '3']);

  const probe = await NbdClient.connect(parseNbdUrl(nbd.url()).address, { structured: true });
  t.comment(`qemu-nbd gave ${BASE_ALLOCATION} the meta context id ${probe.metaContextId(BASE_ALLOCATION)}`);
  t.not(probe.metaContextId(BASE_ALLOCATION), undefined, 'base:allocation negotiated');
  await probe.close();

  const upstream = await NbdUpstream.open(nbd.url(), log, options);
  t.teardown(() => upstream.close());
  const ranges: ZeroRangeAnswer['ranges'] = [];
  for (let at = 0; at < size;) {
    const answer = await upstream.zeroRanges(at, size - at);
    if (!answer) return t.fail('zeroRanges answered null: base:allocation treated as absent');
    ranges.push(...answer.ranges);
    at += answer.covered;
  }
  t.same(ranges, [
    { offset: 0, length: MiB },
    { offset: 2 * MiB, length: 3 * MiB },
    { offset: 5 * MiB + 4096, length: 3 * MiB - 4096 },
  ]);
});

t.test('the source VM writes a block at offset 0; the upstream reconnects to it', async (t) => {
  if (!requireTool(t, 'qemu-nbd')) return;
  const dir = tempDir(t, 'ferry-nbd-qemu-');
  const image = path.join(dir, 'disk.img');
  const size = 8 * MiB;
  fs.writeFileSync(image, patternBytes(size, 5));
  const args = ['-f', 'raw', '-t', '-e', '4', '-x', 'disk'];
  const nbd = await startQemuNbd(t, dir, image, args);
  const upstream = await NbdUpstream.open(nbd.url('disk'), log, options);
  t.teardown(() => upstream.close());
  const identity = upstream.identity;

  // The source VM writes offset 0 through the export (a block every identity sample read).
  const vm = await NbdClient.connect(parseNbdUrl(nbd.url('disk')).address, { exportName: 'disk' });
  const written = Buffer.alloc(4096, 0xa7);
  await vm.write(0, written);
  await vm.flush();
  await vm.close();

  await upstream.reconnect();
  t.equal(upstream.reconnects, 1, 'ferry ctl reconnect: connected again');
  t.ok((await upstream.fetch(0, 4096, 'urgent')).equals(written), 'and reads what the VM wrote');

  // The source goes away and comes back after another write at offset 0.
  const lost = once(upstream, 'disconnected');
  await nbd.stop();
  await lost;
  fs.writeFileSync(image, Buffer.alloc(4096, 0x3c), { flag: 'r+' });
  const back = once(upstream, 'connected');
  await startQemuNbd(t, dir, image, args); // the same socket path
  await back;
  t.equal(upstream.reconnects, 2, 'reconnected by itself');
  t.equal(upstream.identity, identity, 'the identity did not change');
  t.ok((await upstream.fetch(0, 4096, 'background')).equals(Buffer.alloc(4096, 0x3c)));
});

t.test('another image is still refused: another export name or another size', async (t) => {
  if (!requireTool(t, 'qemu-nbd')) return;
  const dir = tempDir(t, 'ferry-nbd-qemu-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, patternBytes(4 * MiB, 6));
  const nbd = await startQemuNbd(t, dir, image, ['-f', 'raw', '-r', '-t', '-e', '4', '-x', 'disk']);
  const upstream = await NbdUpstream.open(nbd.url('disk'), log, options);
  t.teardown(() => upstream.close());

  const renamed = path.join(dir, 'renamed.img');
  fs.copyFileSync(image, renamed);
  const otherName = await startQemuNbd(t, dir, renamed, ['-f', 'raw', '-r', '-t', '-x', 'other']);
  await t.rejects(
    upstream.reconnect(otherName.url('other')),
    /is not the image being migrated \(export "other", size 4194304; expected export "disk", size 4194304\)/,
  );
  const bigger = path.join(dir, 'bigger.img');
  fs.writeFileSync(bigger, patternBytes(6 * MiB, 6));
  const otherSize = await startQemuNbd(t, dir, bigger, ['-f', 'raw', '-r', '-t', '-x', 'disk']);
  await t.rejects(
    upstream.reconnect(otherSize.url('disk')),
    /is not the image being migrated \(export "disk", size 6291456; expected export "disk", size 4194304\)/,
  );
  t.equal(upstream.description, nbd.url('disk'), 'still on the first source');
  t.ok(upstream.connected);
});

t.test('close() ends the reconnect loop and every wait', async (t) => {
  if (!requireTool(t, 'qemu-nbd')) return;
  const dir = tempDir(t, 'ferry-nbd-qemu-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, patternBytes(MiB, 7));
  const nbd = await startQemuNbd(t, dir, image, ['-f', 'raw', '-r', '-t', '-e', '3']);
  const upstream = await NbdUpstream.open(nbd.url(), log, options);
  await nbd.stop();
  await once(upstream, 'connect-failed'); // the loop is retrying
  const waiting = upstream.fetch(0, 4096, 'urgent');
  await upstream.close(); // resolves once the loop has stopped
  await t.rejects(waiting, /upstream closed/, 'a fetch waiting for the source ends');
  await t.rejects(upstream.fetch(0, 4096, 'background'), /upstream closed/);
  let attempts = 0;
  upstream.on('connect-failed', () => attempts++);
  await startQemuNbd(t, dir, image, ['-f', 'raw', '-r', '-t', '-e', '3']);
  await upstream.reconnect(); // nothing to reconnect once closed
  t.equal(attempts, 0, 'no attempt after close');
  t.notOk(upstream.connected);
});
