/**
 * The destination's disk fills mid-migration, on tmpfs and on a loop-mounted
 * ext4: a ballast file leaves room for a third of the image, image and state
 * on the small file system. The VM's writes and FLUSHes get ENOSPC, never
 * EIO; its reads of missing blocks succeed; the state stays loadable and
 * every block it marks held is right; SIGTERM exits non-zero exactly when
 * the last save failed. Then the ballast goes, the destination restarts, and
 * the migration completes with the source plus every flushed write.
 */
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { NbdError, type NbdClient } from '../../src/nbd/client';
import { BlockMap } from '../../src/store/block-map';
import { loopDevice } from '../helpers/loop-device';
import { hasTool } from '../helpers/tools';
import { campaign, endCleanly, reportRow } from './campaign';
import { BS, randomBytes } from './block-model';
import { MigrationRig } from './migration-rig';
import { HangError } from './peak-rss';

endCleanly(t);

const c = campaign();
const random = c.random('disk-full');
const SIZE = c.full ? 64 << 20 : 8 << 20;
/** VM write batches while the disk is full. */
const BATCHES = c.full ? 200 : 20;

type Errno = 'ok' | 'ENOSPC' | 'EIO' | 'other';

function errnoOf(e: unknown): Errno {
  if (!(e instanceof NbdError)) throw e;
  return e.errnoName === 'ENOSPC' ? 'ENOSPC' : e.errnoName === 'EIO' ? 'EIO' : 'other';
}

/** Mounts the small file system at `mnt`; a reason when it cannot. */
function mountSmall(t: Test, kind: 'tmpfs' | 'ext4', dir: string, mnt: string, bytes: number): string | null {
  if (process.getuid?.() !== 0) return 'mounting needs root';
  fs.mkdirSync(mnt);
  if (kind === 'tmpfs') {
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', mnt]).status !== 0)
      return 'cannot mount a tmpfs';
  } else {
    if (!hasTool('mkfs.ext4')) return 'mkfs.ext4 is not installed';
    const device = loopDevice(t, dir, bytes);
    if (!device) return 'no loop device'; // loopDevice planned the skip
    if (spawnSync('mkfs.ext4', ['-q', '-F', device]).status !== 0) return 'mkfs.ext4 failed';
    if (spawnSync('mount', [device, mnt]).status !== 0) return 'cannot mount the ext4 file system';
  }
  // Unmounted before the loop device is detached (teardowns run last first).
  t.teardown(() => void spawnSync('umount', ['-l', mnt]));
  return null;
}

for (const kind of ['tmpfs', 'ext4'] as const) {
  t.test(`disk full at the destination on ${kind} (seed ${c.seed})`, async (t) => {
    const started = Date.now();
    const errnos: Record<Errno, number> = { ok: 0, ENOSPC: 0, EIO: 0, other: 0 };
    const probeDir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'ferry-full-'));
    t.teardown(() => fs.rmSync(probeDir, { recursive: true, force: true }));
    const mnt = path.join(probeDir, 'small');
    const reason = mountSmall(t, kind, probeDir, mnt, SIZE * 2 + (8 << 20));
    if (reason) {
      if (reason !== 'no loop device') t.plan(0, `skipped: ${reason}`);
      return;
    }
    // Room for a third of the image once the state is made.
    const ballast = path.join(mnt, 'ballast');
    const free = fs.statfsSync(mnt).bavail * fs.statfsSync(mnt).bsize;
    const fill = free - Math.floor(SIZE / 3) - (1 << 20);
    const fd = fs.openSync(ballast, 'w');
    const chunk = Buffer.alloc(1 << 20, 0xee);
    for (let at = 0; at < fill; at += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, fill - at));
    fs.fsyncSync(fd);
    fs.closeSync(fd);

    const rig = new MigrationRig(t, { transport: 'nbd', size: SIZE, rate: 'off', destDir: mnt }, random);
    const model = rig.model;
    let sigtermCode: number | null = null;
    let lastSaveFailed = false;
    try {
      await rig.startSource();
      const dest = await rig.startDest();
      await dest.waitForLog('cannot store fetched blocks', 120_000);
      const client = await rig.connect();
      for (let i = 0; i < BATCHES; i++) await fullDiskBatch(client);
      await rig.checkTouched(client, 'while the disk is full');
      await client.close();
      // SIGTERM: exits non-zero exactly when its last save failed.
      sigtermCode = await rig.stopDest();
      lastSaveFailed = dest.logCount('final persist failed') > 0;
      t.equal(
        sigtermCode,
        lastSaveFailed ? 1 : 0,
        `SIGTERM exits ${sigtermCode} (last save failed: ${lastSaveFailed})`,
      );
      // The state loads, and what it marks held is right.
      const map = BlockMap.open(`${rig.destImage}.ferry-state`);
      const image = fs.readFileSync(rig.destImage);
      let wrong = 0;
      for (let b = 0; b < map.blockCount; b++)
        if (map.isHeld(b) && model.check(b, image.subarray(b * BS, (b + 1) * BS))) wrong++;
      t.ok(map.heldCount < map.blockCount, `${map.heldCount} of ${map.blockCount} blocks held when the disk filled`);
      map.close();
      rig.losses += wrong;
      t.equal(wrong, 0, 'every block the state marks held holds what it may');
      // Room again: the migration resumes and completes exactly.
      fs.rmSync(ballast);
      await rig.startDest();
      const after = await rig.connect();
      await rig.checkTouched(after, 'after the restart with room');
      await after.close();
      await rig.finish();
      await rig.stopAll();
    } catch (e) {
      if (e instanceof HangError) rig.hangs++;
      throw e;
    } finally {
      t.equal(errnos.EIO, 0, 'no EIO');
      t.equal(errnos.other, 0, 'no other error');
      reportRow({
        scenario: `disk full (${kind})`,
        faults: `disk full at ${Math.round(SIZE / 3 / (1 << 20))} of ${SIZE >> 20} MiB; ${BATCHES} VM write batches on it; SIGTERM; restart with room`,
        checks: `${errnos.ok} ok / ${errnos.ENOSPC} ENOSPC / ${errnos.EIO} EIO replies; ${model.checks.toLocaleString('en')} block checks; SIGTERM exit ${sigtermCode} (last save ${lastSaveFailed ? 'failed' : 'ok'})`,
        losses: rig.losses,
        crashes: rig.crashes,
        hangs: rig.hangs,
        peakRssMiB: rig.rss.peakMiB,
        seconds: Math.round((Date.now() - started) / 100) / 10,
      });
    }

    /** Whole-block writes and zeroes, a read of a random block, then a FLUSH; every reply ok or ENOSPC. */
    async function fullDiskBatch(client: NbdClient): Promise<void> {
      const blocks = new Set<number>();
      while (blocks.size < 4) blocks.add(Math.floor(random() * model.blocks));
      const written: Array<[number, Buffer]> = [];
      await Promise.all(
        [...blocks].map(async (block) => {
          const zero = random() < 0.2;
          const after = zero ? Buffer.alloc(BS) : randomBytes(BS, random);
          model.begin(block, after);
          try {
            if (zero) await client.zero(block * BS, BS);
            else await client.write(block * BS, after);
            errnos.ok++;
            written.push([block, after]);
          } catch (e) {
            errnos[errnoOf(e)]++;
            model.forget(block);
          }
        }),
      );
      const block = Math.floor(random() * model.blocks);
      try {
        const got = await client.read(block * BS, BS);
        errnos.ok++;
        if (model.check(block, got)) {
          rig.losses++;
          t.fail(`a read of block ${block} on the full disk returned what it may not`);
        }
      } catch (e) {
        errnos[errnoOf(e)]++;
        t.fail(`a read of block ${block} on the full disk failed: ${(e as Error).message}`);
      }
      try {
        await client.flush();
        errnos.ok++;
        for (const [b, after] of written) model.settle(b, after);
      } catch (e) {
        errnos[errnoOf(e)]++; // the writes stay open: old or new
      }
    }
  });
}
