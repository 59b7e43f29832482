/**
 * kill -9 at random moments of one migration, over plain NBD (`ferry serve`
 * as the source) and over the ferry wire (`ferry source`), while a VM writes
 * batches of whole blocks, sub-block patches and write-zeroes and flushes
 * after each: of the destination N times (every touched block checked after
 * each restart), then of the source, then of both at once. At the end the
 * image is the source plus the writes, block for block.
 */
import t, { type Test } from 'tap';
import { campaign, endCleanly, reportRow } from './campaign';
import { MigrationRig, type Transport } from './migration-rig';
import { HangError } from './peak-rss';
import type { NbdClient } from '../../src/nbd/client';
import { BS } from './block-model';

endCleanly(t);

const c = campaign();
const random = c.random('kill9');
const KILLS = c.full ? 20 : 3;
const SIZE = c.full ? 64 << 20 : 8 << 20;
const RATE = c.full ? '4M' : '1M';

/** Writes batches until the connection is cut; reads a random block between batches. */
async function writeUntilCut(rig: MigrationRig, client: NbdClient): Promise<void> {
  const model = rig.model;
  try {
    for (;;) {
      await model.writeBatch(client, 2 + Math.floor(random() * 14));
      const block = Math.floor(random() * model.blocks);
      const got = await client.read(block * BS, BS);
      const bad = model.check(block, got);
      if (bad) {
        rig.losses++;
        t.fail(`block ${block} read between batches holds what it may not`);
      }
    }
  } catch {
    // the kill cut the connection
  }
}

/** Writes batches until `stop()` is called; every error is a failure (the destination stays up). */
function writeInBackground(rig: MigrationRig, client: NbdClient): { stop(): Promise<void> } {
  let stopping = false;
  const running = (async () => {
    while (!stopping) await rig.model.writeBatch(client, 2 + Math.floor(random() * 14));
  })();
  return {
    stop: async () => {
      stopping = true;
      await running;
    },
  };
}

async function scenario(
  t: Test,
  name: string,
  transport: Transport,
  faults: string,
  body: (rig: MigrationRig) => Promise<void>,
) {
  const started = Date.now();
  const rig = new MigrationRig(t, { transport, size: SIZE, rate: RATE }, random);
  try {
    await body(rig);
    await rig.finish();
    await rig.stopAll();
  } catch (e) {
    if (e instanceof HangError) rig.hangs++;
    throw e;
  } finally {
    const rows = rig.model.checks;
    reportRow({
      scenario: name,
      faults,
      checks: `${rows.toLocaleString('en')} block checks, ${rig.model.flushedWrites.toLocaleString('en')} flushed writes (${SIZE >> 20} MiB, ${transport === 'nbd' ? 'plain NBD' : 'ferry wire'})`,
      losses: rig.losses,
      crashes: rig.crashes,
      hangs: rig.hangs,
      peakRssMiB: rig.rss.peakMiB,
      seconds: Math.round((Date.now() - started) / 100) / 10,
    });
  }
}

for (const transport of ['nbd', 'ferry'] as const) {
  t.test(`${KILLS} × kill -9 of the destination over ${transport} (seed ${c.seed})`, (t) =>
    scenario(
      t,
      `kill -9 destination (${transport})`,
      transport,
      `${KILLS} × kill -9 of the destination`,
      async (rig) => {
        await rig.startSource();
        for (let round = 0; ; round++) {
          await rig.startDest();
          const client = await rig.connect();
          await rig.checkTouched(client, `after restart ${round}`);
          if (round === KILLS) break;
          const killAt = random() * 800;
          const killer = setTimeout(() => void rig.kill('dest'), killAt);
          await writeUntilCut(rig, client);
          clearTimeout(killer);
          await rig.kill('dest');
        }
        t.ok(rig.model.flushedWrites > KILLS, `${rig.model.flushedWrites} flushed writes`);
      },
    ),
  );

  t.test(`kill -9 of the source, then of both, over ${transport} (seed ${c.seed})`, (t) =>
    scenario(
      t,
      `kill -9 source, both (${transport})`,
      transport,
      'kill -9 of the source; of both at once',
      async (rig) => {
        await rig.startSource();
        await rig.startDest();
        let client = await rig.connect();
        // The source dies under a writing VM and comes back on its port.
        const writer = writeInBackground(rig, client);
        await rig.destDaemon.waitForLog('migration started');
        await new Promise((r) => setTimeout(r, random() * 800)); // a random moment, not a synchronisation
        await rig.kill('source');
        await rig.startSource();
        await rig.destDaemon.waitForLog('source reconnected', 60_000);
        await writer.stop();
        await rig.checkTouched(client, 'after the source restarted');
        // Both die at once, in the middle of a batch.
        const killAt = random() * 800;
        const killer = setTimeout(() => void Promise.all([rig.kill('dest'), rig.kill('source')]), killAt);
        await writeUntilCut(rig, client);
        clearTimeout(killer);
        await Promise.all([rig.kill('dest'), rig.kill('source')]);
        await rig.startSource();
        await rig.startDest();
        client = await rig.connect();
        await rig.checkTouched(client, 'after both restarted');
        await rig.model.writeBatch(client, 8);
      },
    ),
  );
}
