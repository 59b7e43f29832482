import t from 'tap';
import path from 'node:path';
import { run } from './helpers/run';

t.test('ferry demo migrates over the emulated link and verifies the result', async (t) => {
  const bin = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
  const r = await run(
    process.execPath,
    [bin, 'demo', '--size-mib', '32', '--latency-ms', '10', '--bandwidth-mbit', '200'],
    {
      timeoutMs: 120_000,
    },
  );
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /migration complete in [\d.]+ s/);
  t.match(r.stdout, /VM during migration: \d+ reads \(0 wrong\)/);
  t.match(r.stdout, /verified: all 8192 blocks of the destination equal the source plus the VM's writes/);
});

t.test('ferry demo rejects bad options', async (t) => {
  const bin = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
  const r = await run(process.execPath, [bin, 'demo', '--size-mib', 'lots'], { timeoutMs: 30_000 });
  t.equal(r.code, 2);
  t.match(r.stderr, /--size-mib must be an integer 1\.\.4096 \(got "lots"\)/);
});
