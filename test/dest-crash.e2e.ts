/**
 * kill -9 of the destination at random moments while a writer flushes:
 * after each restart every flushed write is still there, and at the end the
 * image is the source plus the writes.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { NbdClient } from '../src/nbd/client';

const SIZE = 16 << 20;
const SLOT = 16 * 1024; // writes go to distinct 16 KiB slots, never reused
const KILLS = 12;

t.test('kill -9 during migration loses no flushed write', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-crash-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sourcePath = path.join(dir, 'source.img');
  const source = crypto.randomBytes(SIZE);
  source.fill(0, 4 << 20, 8 << 20); // some zeros, as disks have
  fs.writeFileSync(sourcePath, source);
  const src = await startFerry(t, ['serve', '--image', sourcePath, '--read-only', '--listen', '127.0.0.1:0']);
  const sourceUrl = `nbd://127.0.0.1:${servingPort(src)}/source.img`;
  const image = path.join(dir, 'dest.img');
  // The copy is rate-limited so the migration spans every kill.
  const destArgs = [
    'dest',
    '--cutover-at-start',
    '--source',
    sourceUrl,
    '--image',
    image,
    '--listen',
    '127.0.0.1:0',
    '--rate',
    '1M',
    '--log-level',
    'info',
  ];

  const durable = new Map<number, Buffer>(); // slot → data, acknowledged after FUA or FLUSH
  const uncertain = new Map<number, Buffer>(); // slot → data, in flight when killed
  const slots = [...Array(SIZE / SLOT).keys()].sort(() => Math.random() - 0.5);

  for (let round = 0; round <= KILLS; round++) {
    const dest = await startFerry(t, destArgs);
    const client = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
    client.on('close', () => undefined);
    // Everything durable so far must be there after the restart.
    for (const [slot, data] of durable) {
      const got = await client.read(slot * SLOT, data.length);
      if (!got.equals(data)) t.fail(`round ${round}: flushed write at slot ${slot} lost`);
    }
    if (round === KILLS) {
      await client.close();
      await dest.stop();
      break;
    }
    const killAt = 150 + Math.random() * 500;
    const started = Date.now();
    let killed = false;
    const killer = setTimeout(() => {
      killed = true;
      dest.child.kill('SIGKILL');
    }, killAt);
    try {
      while (!killed) {
        const batch = slots.splice(0, 4);
        const pending = batch.map((slot) => {
          // Partial and whole blocks, some reads of missing blocks in between.
          const length = Math.random() < 0.5 ? SLOT : 1 + Math.floor(Math.random() * (SLOT - 1));
          const data = crypto.randomBytes(length);
          uncertain.set(slot, data);
          return client.write(slot * SLOT, data, Math.random() < 0.3).then(() => slot);
        });
        const done = await Promise.all(pending);
        await client.flush();
        for (const slot of done) {
          durable.set(slot, uncertain.get(slot)!);
          uncertain.delete(slot);
        }
        await client.read(Math.floor(Math.random() * (SIZE - 4096)), 4096);
      }
    } catch {
      // the kill cut the connection
    }
    clearTimeout(killer);
    await dest.exited;
    t.ok(Date.now() - started >= killAt - 5, `round ${round}: killed after ${Math.round(killAt)} ms`);
    client.destroy();
  }
  t.ok(durable.size > 20, `${durable.size} flushed writes tracked`);

  // Finish without the rate limit, then compare the whole image.
  const last = await startFerry(
    t,
    destArgs.filter((a, i, all) => a !== '--rate' && all[i - 1] !== '--rate'),
  );
  await last.waitForLog(/migration (complete|already complete)/, 60_000);
  t.equal(await last.stop(), 0, 'SIGTERM exits 0');
  const final = fs.readFileSync(image);
  const expected = Buffer.from(source);
  for (const [slot, data] of durable) data.copy(expected, slot * SLOT);
  let bad = 0;
  for (const [slot, data] of uncertain) {
    // An unflushed write is either there whole or not there, block by block.
    for (let at = 0; at < data.length; at += 4096) {
      const off = slot * SLOT + at;
      const len = Math.min(4096, data.length - at);
      const got = final.subarray(off, off + len);
      if (got.equals(data.subarray(at, at + len))) data.copy(expected, off, at, at + len);
      else if (!got.equals(source.subarray(off, off + len))) bad++;
    }
  }
  t.equal(bad, 0, 'no block is half old, half new');
  t.ok(final.equals(expected), 'final image equals the source plus the writes');
});
