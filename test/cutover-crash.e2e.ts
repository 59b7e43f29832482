/**
 * kill -9 of either side during the cutover, then restart: the cutover
 * finishes once, with one write set, and the final image is the source with
 * every write its VM made plus the destination's writes. The moment of the
 * kill is drawn at random (FERRY_SEED replays it).
 */
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { ctlStatus, ferryCtl, servingPort, startFerry, type FerryDaemon } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';

const SIZE = 16 << 20;
const BS = 4096;

interface Rig {
  dir: string;
  model: Buffer;
  /** `ferry source` with write tracking, a control socket and a state directory; port 0: any. */
  sourceArgs: (port?: number) => string[];
  destArgs: string[];
  srcCtl: string;
  destCtl: string;
  destImage: string;
}

function rig(t: Test): Rig {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  const model = crypto.randomBytes(SIZE);
  model.fill(0, 8 << 20, 12 << 20);
  fs.writeFileSync(image, model);
  const srcCtl = path.join(dir, 'src.ctl');
  const destCtl = path.join(dir, 'dest.ctl');
  const destImage = path.join(dir, 'dest.img');
  return {
    dir,
    model,
    srcCtl,
    destCtl,
    destImage,
    sourceArgs: (port = 0) => [
      ...['source', '--image', image, '--listen', `127.0.0.1:${port}`, '--nbd-listen', '127.0.0.1:0', '--insecure'],
      ...['--control', srcCtl, '--state-dir', path.join(dir, 'source-state')],
    ],
    destArgs: [
      ...['dest', '--image', destImage, '--listen', '127.0.0.1:0', '--control', destCtl, '--insecure'],
      ...['--rate', '2M'],
    ],
  };
}

function nbdPort(d: FerryDaemon): number {
  const address = String(d.serving.nbd);
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

async function sourceVm(t: Test, src: FerryDaemon): Promise<NbdClient> {
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort(src) }, { exportName: 'disk.img' });
  vm.on('close', () => undefined);
  t.teardown(() => vm.close().catch(() => undefined));
  return vm;
}

/** The source VM writes whole blocks all over the image and flushes; the model follows. */
async function sourceWrites(vm: NbdClient, model: Buffer, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const block = crypto.randomInt(SIZE / BS);
    const data = crypto.randomBytes(BS);
    await vm.write(block * BS, data);
    data.copy(model, block * BS);
  }
  await vm.flush();
}

/** One write at the source after the kill: accepted only if the source was not fenced yet. */
async function probeWrite(vm: NbdClient, model: Buffer): Promise<'accepted' | 'refused'> {
  const data = crypto.randomBytes(BS);
  try {
    await vm.write(3 * BS, data);
    await vm.flush();
  } catch {
    return 'refused';
  }
  data.copy(model, 3 * BS);
  return 'accepted';
}

async function waitUntil(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 180_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

async function finish(t: Test, r: Rig, dest: FerryDaemon): Promise<void> {
  const cut = await ferryCtl(r.destCtl, 'cutover');
  t.equal(cut.code, 0, `cutover after the restart: ${cut.stdout}${cut.stderr}`);
  const destVm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
  const mine = crypto.randomBytes(BS);
  await destVm.write(7 * BS, mine, true);
  mine.copy(r.model, 7 * BS);
  await ferryCtl(r.destCtl, 'rate', 'off');
  await waitUntil(async () => (await ctlStatus(r.destCtl)).phase === 'complete', 'completion');
  await destVm.close();
  await dest.stop();
  t.ok(fs.readFileSync(r.destImage).equals(r.model), 'final image = source + all its writes + the destination write');
}

const seed = Number(process.env.FERRY_SEED ?? crypto.randomInt(1, 2 ** 31));

t.test(`destination killed during the cutover (seed ${seed})`, async (t) => {
  const r = rig(t);
  const src = await startFerry(t, r.sourceArgs());
  const vm = await sourceVm(t, src);
  let dest = await startFerry(t, [...r.destArgs, '--source', `ferry://127.0.0.1:${servingPort(src)}/disk.img`]);
  await sourceWrites(vm, r.model, 50);
  await waitUntil(async () => (await ctlStatus(r.destCtl)).blocksHeld > 512, 'the warm copy');
  await sourceWrites(vm, r.model, 50); // many land on blocks already copied
  // The source VM stops; the cutover starts at the destination and the destination dies in it.
  const killAt = seed % 2 === 0 ? 'cutover: the source is fenced and hands over its final write set' : 'phase';
  void ferryCtl(r.destCtl, 'cutover');
  await dest.waitForLog(killAt, 60_000);
  await dest.stop('SIGKILL');
  const probe = await probeWrite(vm, r.model);
  t.comment(`killed at "${killAt}"; a source write after the kill was ${probe}`);
  dest = await startFerry(t, r.destArgs);
  await finish(t, r, dest);
  t.equal(await probeWrite(vm, Buffer.alloc(SIZE)), 'refused', 'the source stays fenced');
});

t.test(`source killed during the cutover (seed ${seed})`, async (t) => {
  const r = rig(t);
  let src = await startFerry(t, r.sourceArgs());
  let vm = await sourceVm(t, src);
  const dest = await startFerry(t, [...r.destArgs, '--source', `ferry://127.0.0.1:${servingPort(src)}/disk.img`]);
  await sourceWrites(vm, r.model, 50);
  await waitUntil(async () => (await ctlStatus(r.destCtl)).blocksHeld > 512, 'the warm copy');
  await sourceWrites(vm, r.model, 50);
  const killAt =
    seed % 2 === 0
      ? 'fencing: the source takes no more writes from its VM'
      : 'cut over: final write sets recorded and sent';
  void ferryCtl(r.srcCtl, 'cutover');
  await src.waitForLog(killAt, 60_000);
  await src.stop('SIGKILL');
  // Same port: the destination reconnects to the source it knows.
  const port = servingPort(src);
  src = await startFerry(t, r.sourceArgs(port));
  vm = await sourceVm(t, src);
  const probe = await probeWrite(vm, r.model);
  t.comment(`source killed at "${killAt}"; a source write after its restart was ${probe}`);
  await finish(t, r, dest);
});
