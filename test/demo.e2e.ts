import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { run } from './helpers/run';

t.test('ferry demo migrates over the emulated link and verifies the result', async (t) => {
  const bin = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
  const r = await run(
    process.execPath,
    [bin, 'demo', '--size-mib', '32', '--latency-ms', '10', '--bandwidth-mbit', '200', '--keep'],
    {
      timeoutMs: 120_000,
    },
  );
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /migration complete in [\d.]+ s/);
  t.match(r.stdout, /VM during migration: \d+ reads \(0 wrong\)/);
  t.match(r.stdout, /verified: all 8192 blocks of the destination equal the source plus the VM's writes/);
  const kept = /kept (\S+) /.exec(r.stdout)?.[1];
  t.ok(kept, 'the kept directory is named');
  if (!kept) return;
  t.teardown(() => fs.rmSync(kept, { recursive: true, force: true }));
  for (const name of ['source', 'dest']) {
    const log = fs.readFileSync(path.join(kept, `${name}.log`), 'utf8');
    t.match(log, /"msg":"serving"/, `--keep keeps ${name}.log`);
  }
});

t.test('ferry demo rejects bad options', async (t) => {
  const bin = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
  const r = await run(process.execPath, [bin, 'demo', '--size-mib', 'lots'], { timeoutMs: 30_000 });
  t.equal(r.code, 2);
  t.match(r.stderr, /--size-mib must be an integer 1\.\.4096 \(got "lots"\)/);
});
