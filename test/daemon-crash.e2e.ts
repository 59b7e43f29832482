/**
 * kill -9 of `ferry daemon`: with four migrations in flight and VMs writing
 * and flushing at the destination, a restart resumes every migration and no
 * flushed write is lost; a multi-disk cutover killed half-way is finished
 * for every disk by the next start.
 */
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { startFerry } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, nbdPort, sha256, startFerryd, status, untilState } from './helpers/ferryd';
import { startNbdkit } from './helpers/nbdkit';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';

const BLOCK = 4096;

interface Writes {
  /** Blocks whose write and a later flush were acknowledged: they must survive. */
  flushed: Map<number, Buffer>;
  /** Blocks written but not flushed when the daemon died: either content is right. */
  pending: Map<number, Buffer>;
}

/** Writes fresh blocks one at a time, each followed by a flush, until the connection dies. */
async function writeAndFlush(client: NbdClient, blocks: number, writes: Writes): Promise<void> {
  const order = [...Array(blocks).keys()].sort(() => Math.random() - 0.5);
  for (const block of order) {
    const data = crypto.randomBytes(BLOCK);
    writes.pending.set(block, data);
    try {
      await client.write(block * BLOCK, data);
      await client.flush();
    } catch {
      return; // the daemon died: this block's write may or may not have landed
    }
    writes.pending.delete(block);
    writes.flushed.set(block, data);
  }
}

function verify(t: Test, image: string, source: Buffer, writes: Writes, what: string): void {
  const got = fs.readFileSync(image);
  t.equal(got.length, source.length, `${what}: size`);
  let lost = 0;
  let wrong = 0;
  for (let b = 0; b < source.length / BLOCK; b++) {
    const block = got.subarray(b * BLOCK, (b + 1) * BLOCK);
    const original = source.subarray(b * BLOCK, (b + 1) * BLOCK);
    const flushed = writes.flushed.get(b);
    const pending = writes.pending.get(b);
    if (flushed) {
      if (!block.equals(flushed)) lost++;
    } else if (!block.equals(original) && !(pending && block.equals(pending))) wrong++;
  }
  t.equal(lost, 0, `${what}: every flushed write (${writes.flushed.size}) is there`);
  t.equal(wrong, 0, `${what}: every other block is the source's (or the unflushed write)`);
}

t.test('kill -9 with four migrations in flight and writers flushing: all resume, no flushed write lost', async (t) => {
  const dir = tempDir(t, 'ferryd-crash-');
  const sources = path.join(dir, 'sources');
  const images = path.join(dir, 'images');
  fs.mkdirSync(sources);
  fs.mkdirSync(images);
  const layout: Record<string, string[]> = { m1: ['vda', 'vdb'], m2: ['vda', 'vdb'], m3: ['vda'], m4: ['vda'] };
  const content = new Map<string, Buffer>();
  let seed = 11;
  for (const [m, disks] of Object.entries(layout))
    for (const disk of disks)
      content.set(`${m}/${disk}`, writePatternFile(path.join(sources, `${m}-${disk}.img`), 4 << 20, seed++));
  const port = await startNbdkit(t, ['file', `dir=${sources}`]);
  const d = ferrydConfig(dir);
  let daemon = await startFerryd(t, d);
  // Capped, so that every migration is still copying when the daemon dies.
  for (const [m, disks] of Object.entries(layout))
    await ctl(d, {
      cmd: 'create',
      spec: {
        name: m,
        rate: 256 << 10,
        start: true,
        cutover: 'at-start',
        disk: disks.map((disk) => ({
          name: disk,
          source: `nbd://127.0.0.1:${port}/${m}-${disk}.img`,
          image: path.join(images, `${m}-${disk}.img`),
        })),
      },
    });

  const writes = new Map<string, Writes>();
  const clients: NbdClient[] = [];
  const writers: Promise<void>[] = [];
  for (const key of content.keys()) {
    const w: Writes = { flushed: new Map(), pending: new Map() };
    writes.set(key, w);
    const client = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort(daemon) }, { exportName: key });
    clients.push(client);
    writers.push(writeAndFlush(client, 256, w));
  }
  await until(
    () => [...writes.values()].every((w) => w.flushed.size >= 10),
    'every writer has flushed ten writes',
    120_000,
  );
  const inFlight = await Promise.all(Object.keys(layout).map((m) => status(d, m)));
  t.ok(
    inFlight.every((s) => s.total.bytesHeld < s.total.bytesTotal),
    'every migration is still copying when the daemon is killed',
  );
  daemon.child.kill('SIGKILL');
  await daemon.exited;
  await Promise.all(writers);
  for (const c of clients) await c.close().catch(() => undefined);

  daemon = await startFerryd(t, d);
  for (const m of Object.keys(layout)) {
    const s = await status(d, m);
    t.equal(s.stage, 'cutover', `${m} resumed at its stage`);
    t.equal(s.error, null);
    await ctl(d, { cmd: 'rate', name: m, bytesPerSecond: null });
  }
  for (const m of Object.keys(layout)) await untilState(d, m, 'complete');
  for (const [m, disks] of Object.entries(layout))
    for (const disk of disks)
      verify(
        t,
        path.join(images, `${m}-${disk}.img`),
        content.get(`${m}/${disk}`)!,
        writes.get(`${m}/${disk}`)!,
        `${m}/${disk}`,
      );
  await daemon.stop();
});

t.test('a cutover of two disks killed half-way is finished after restart for both', async (t) => {
  const dir = tempDir(t, 'ferryd-cutover-');
  const vda = path.join(dir, 'vda-source.img');
  const vdb = path.join(dir, 'vdb-source.img');
  writePatternFile(vda, 2 << 20, 5);
  writePatternFile(vdb, 2 << 20, 6);
  const before = { vda: sha256(vda), vdb: sha256(vdb) };
  const port = await startNbdkit(t, ['file', vda]);
  // vdb's source tracks its writes (a VM may write through its NBD side): its cutover needs the source's final set.
  const source = await startFerry(t, [
    'source',
    '--image',
    vdb,
    '--listen',
    '127.0.0.1:0',
    '--nbd-listen',
    '127.0.0.1:0',
    '--insecure',
  ]);
  const d = ferrydConfig(dir);
  let daemon = await startFerryd(t, d);
  const image = (disk: string): string => path.join(dir, `vm-${disk}.img`);
  await ctl(d, {
    cmd: 'create',
    spec: {
      name: 'vm',
      start: true,
      disk: [
        { name: 'vda', source: `nbd://127.0.0.1:${port}/`, image: image('vda') },
        { name: 'vdb', source: `ferry://${String(source.serving.address)}/vdb-source.img`, image: image('vdb') },
      ],
    },
  });
  // The ferry source stops answering: vda cuts over, vdb waits for its final write set.
  source.child.kill('SIGSTOP');
  const cutover = ctl(d, { cmd: 'cutover', name: 'vm' }).catch((e: Error) => e);
  await until(
    async () => (await status(d, 'vm')).disks.find((x) => x.name === 'vda')?.status?.phase !== 'warming',
    'vda has cut over',
    60_000,
    50,
  );
  const half = await status(d, 'vm');
  t.equal(half.disks.find((x) => x.name === 'vdb')?.status?.phase, 'cutover', 'vdb is half-way');
  daemon.child.kill('SIGKILL');
  await daemon.exited;
  t.type(await cutover, Error, 'the killed cutover never answered yes');
  const registry = JSON.parse(fs.readFileSync(path.join(d.stateDir, 'registry.json'), 'utf8')) as {
    body: { migrations: Array<{ stage: string }> };
  };
  t.equal(registry.body.migrations[0].stage, 'cutover', 'the cutover was recorded before any disk cut over');

  source.child.kill('SIGCONT');
  daemon = await startFerryd(t, d);
  await untilState(d, 'vm', 'complete');
  const done = await status(d, 'vm');
  t.same(
    done.disks.map((x) => x.status?.phase),
    ['complete', 'complete'],
  );
  t.equal(sha256(image('vda')), before.vda);
  t.equal(sha256(image('vdb')), before.vdb);
  await daemon.stop();
});
