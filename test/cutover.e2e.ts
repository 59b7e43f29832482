/**
 * The source VM keeps writing while `ferry dest` starts; nothing it wrote may
 * be served stale, before or after cutover, and the final image must hold it.
 * A 64 MiB source (32 MiB of data, then a hole); the source VM writes to a
 * block at the start, one in the hole and one near the end, both before and
 * (where the copy may run warm) after the destination copied them.
 */
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { ctlStatus, ferryCtl, freePort, servingPort, startFerry, type FerryDaemon } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';

const SIZE = 64 << 20;
const BS = 4096;
const TARGETS = [0, (40 << 20) / BS, SIZE / BS - 3]; // copied first, inside the hole, copied last

export interface SourceUnderTest {
  /** The URL `ferry dest --source` takes. */
  url: string;
  /** The source VM's disk connection (writes go through the source's own NBD server). */
  vm: NbdClient;
  /** Extra `ferry dest` flags for this kind of source. */
  destFlags: string[];
  /** Whether the destination may copy before cutover (the source reports its writes). */
  warm: boolean;
}

export type SourceFactory = (t: Test, dir: string, imagePath: string) => Promise<SourceUnderTest>;

/** Plain NBD: `ferry serve` is both the source VM's disk and the destination's source. */
export const plainNbdSource: SourceFactory = async (t, _dir, imagePath) => {
  const serve = await startFerry(t, ['serve', '--image', imagePath, '--listen', '127.0.0.1:0']);
  const port = servingPort(serve);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: path.basename(imagePath) });
  t.teardown(() => vm.close());
  return { url: `nbd://127.0.0.1:${port}/${path.basename(imagePath)}`, vm, destFlags: [], warm: false };
};

function makeSourceImage(file: string): Buffer {
  const content = Buffer.alloc(SIZE);
  crypto.randomFillSync(content, 0, 32 << 20);
  crypto.randomFillSync(content, SIZE - (4 << 20)); // data again at the end
  fs.writeFileSync(file, content);
  return content;
}

async function waitFor(check: () => Promise<boolean>, what: string, limitMs = 120_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

export async function reproduction(t: Test, makeSource: SourceFactory): Promise<void> {
  const dir = tempDir(t);
  const sourcePath = path.join(dir, 'disk.img');
  const model = makeSourceImage(sourcePath);
  const src = await makeSource(t, dir, sourcePath);
  const control = path.join(dir, 'dest.ctl');
  const destImage = path.join(dir, 'dest.img');
  const dest: FerryDaemon = await startFerry(t, [
    'dest',
    '--source',
    src.url,
    '--image',
    destImage,
    '--listen',
    '127.0.0.1:0',
    '--control',
    control,
    '--rate',
    '4M',
    ...src.destFlags,
  ]);
  const destVm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
  t.teardown(() => destVm.close());

  const sourceWrite = async (block: number, round: number): Promise<void> => {
    const data = crypto.randomBytes(BS);
    data.writeUInt32LE(round, 0);
    await src.vm.write(block * BS, data);
    await src.vm.flush();
    data.copy(model, block * BS);
  };
  const checkThroughDest = async (when: string): Promise<void> => {
    for (const block of TARGETS) {
      const got = await destVm.read(block * BS, BS);
      t.ok(got.equals(model.subarray(block * BS, (block + 1) * BS)), `block ${block} current ${when}`);
    }
  };

  // QEMU's early read of sector 0, before the VM runs here: answered, not kept.
  await checkThroughDest('before any source write');
  if (src.warm) {
    // Let the warm copy take the first blocks (and the zero scan the hole) before the source VM rewrites them.
    await waitFor(async () => (await ctlStatus(control)).blocksHeld > 2048, 'the warm copy to start');
  }
  for (const block of TARGETS) await sourceWrite(block, 1);
  await checkThroughDest('after the source VM wrote them');
  const warming = await ctlStatus(control);
  t.equal(warming.phase, 'warming');
  if (!src.warm) t.equal(warming.blocksHeld, 0, 'nothing copied before cutover without write tracking');

  for (const block of TARGETS) await sourceWrite(block, 2);
  // The switch-over: the source VM stops (no more writes), the destination takes over.
  const cut = await ferryCtl(control, 'cutover');
  t.equal(cut.code, 0, `ferry ctl cutover: ${cut.stderr}`);
  // A warm copy that already held everything else completes as soon as the final set is fetched.
  const after = (await ctlStatus(control)).phase;
  t.ok(after === 'post-copy' || (src.warm && after === 'complete'), `phase ${after} after cutover`);
  await checkThroughDest('after cutover');
  const destWrite = crypto.randomBytes(BS);
  await destVm.write(5 * BS, destWrite);
  await destVm.flush();
  destWrite.copy(model, 5 * BS);

  await ferryCtl(control, 'rate', 'off');
  await waitFor(async () => (await ctlStatus(control)).phase === 'complete', 'completion');
  await checkThroughDest('after complete');
  const status = await ctlStatus(control);
  if (src.warm) t.ok(status.blocksInvalidated > 0, `${status.blocksInvalidated} copied blocks fetched again`);
  await destVm.close();
  await dest.stop();
  t.ok(fs.readFileSync(destImage).equals(model), 'final image = source with all its writes + the destination write');
}

t.test('plain NBD source: no warm-up, nothing stale before or after cutover', (t) => reproduction(t, plainNbdSource));

/** ferry source with --nbd-listen: the source VM's disk is its NBD port; it reports every write over the wire. */
export const ferrySource: SourceFactory = async (t, dir, imagePath) => {
  const nbdPort = await freePort();
  const source = await startFerry(t, [
    ...['source', '--image', imagePath, '--listen', '127.0.0.1:0', '--insecure', '--workers', '1'],
    ...['--nbd-listen', `127.0.0.1:${nbdPort}`, '--state-dir', path.join(dir, 'source-state')],
  ]);
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort }, { exportName: path.basename(imagePath) });
  t.teardown(() => vm.close().catch(() => undefined));
  const url = `ferry://127.0.0.1:${servingPort(source)}/${path.basename(imagePath)}`;
  return { url, vm, destFlags: ['--insecure'], warm: true };
};

t.test('ferry source with --nbd-listen: a warm copy, writes reported, nothing stale before or after cutover', (t) =>
  reproduction(t, ferrySource),
);
