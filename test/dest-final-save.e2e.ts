/**
 * SIGTERM when the destination's final save fails: the process must exit
 * non-zero and say so (an operator or a unit manager must not take it for a
 * clean stop), and what was flushed before must still be there on restart.
 * The save is made to fail by a fault hook preloaded into the destination
 * (test/helpers/fail-state-sync-on-term): after SIGTERM every fdatasync of
 * its block map fails with EIO.
 */
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { startFerry, servingPort, type FerryDaemon } from './helpers/ferry-daemon';
import { startFerryServe } from './helpers/ferry-serve';
import { tempDir, writePatternFile } from './helpers/temp-dir';

const SIZE = 8 << 20;
const BS = 4096;
const FAULT_HOOK = path.resolve(__dirname, 'helpers', 'fail-state-sync-on-term.js');

/** Starts a destination with the fault hook preloaded (NODE_OPTIONS reaches only the children started meanwhile). */
async function startWithHook(t: Parameters<typeof startFerry>[0], args: string[]): Promise<FerryDaemon> {
  const before = process.env.NODE_OPTIONS;
  process.env.NODE_OPTIONS = `${before ?? ''} --require ${FAULT_HOOK}`.trim();
  try {
    return await startFerry(t, args);
  } finally {
    if (before === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = before;
  }
}

t.test('SIGTERM after a failed final save exits non-zero, and loses nothing flushed', async (t) => {
  const dir = tempDir(t, 'ferry-final-save-');
  const sourceImage = path.join(dir, 'source.img');
  writePatternFile(sourceImage, SIZE, 3);
  const source = await startFerryServe(t, ['--image', sourceImage, '--read-only']);
  // No periodic save: the copy's progress is saved only by the VM's flush and the final save.
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, '[dest]\npersist_interval_ms = 3600000\n\n[copy]\nrate_limit = 262144\n');
  const args = [
    ...['dest', '--cutover-at-start', '--source', source.uri(), '--image', path.join(dir, 'dest.img')],
    ...['--listen', '127.0.0.1:0', '--config', config],
  ];
  const dest = await startWithHook(t, args);
  const written = crypto.randomBytes(BS);
  const block = 1000;
  const vm = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(dest) }, { exportName: 'dest.img' });
  await vm.write(block * BS, written);
  await vm.flush();
  // A write after the flush: the final save has a block map page to write, and its sync fails.
  await vm.write(1500 * BS, crypto.randomBytes(BS));
  await vm.close();

  const code = await dest.stop('SIGTERM');
  t.not(code, 0, `exit code ${code}: the final save failed`);
  t.equal(code, 1, 'exit code 1');
  t.match(dest.stderr(), /"msg":"final persist failed"/, 'the log names the failed final save');
  t.match(dest.stderr(), /EIO/, 'and why');
  t.match(dest.stderr(), /"msg":"shutdown failed"/, 'and that the shutdown failed');
  t.notMatch(dest.stderr(), /"msg":"stopped"/, 'not that it stopped cleanly');

  // The flushed write was durable before the failure: a restart serves it.
  const again = await startFerry(t, args);
  const vm2 = await NbdClient.connect({ host: '127.0.0.1', port: servingPort(again) }, { exportName: 'dest.img' });
  t.ok((await vm2.read(block * BS, BS)).equals(written), 'the flushed write survives the failed final save');
  const source0 = fs.readFileSync(sourceImage).subarray(0, BS);
  t.ok((await vm2.read(0, BS)).equals(source0), "an unwritten block holds the source's bytes");
  await vm2.close();
  t.equal(await again.stop('SIGTERM'), 0, 'a clean restart stops cleanly (exit 0)');
});
