/** fio's nbd engine: random writes at queue depth 16, then every block verified by checksum. */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startFerryServe } from './helpers/ferry-serve';
import { run } from './helpers/run';
import { tempDir } from './helpers/temp-dir';
import { requireTool } from './helpers/tools';

const MiB = 1 << 20;

t.test('fio nbd engine: randwrite QD16 with crc32c verify', async (t) => {
  if (!requireTool(t, 'fio')) return;
  const dir = tempDir(t);
  const image = path.join(dir, 'fio.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 64 * MiB);
  const ferry = await startFerryServe(t, ['--image', image]);
  for (const bs of ['4k', '64k', '1M']) {
    const result = await run(
      'fio',
      [
        `--name=verify-${bs}`,
        '--ioengine=nbd',
        `--uri=${ferry.uri()}`,
        '--rw=randwrite',
        `--bs=${bs}`,
        '--iodepth=16',
        '--size=64M',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--do_verify=1',
        '--randrepeat=0',
        '--output-format=json',
        '--verify_state_save=0',
      ],
      { timeoutMs: 120_000, cwd: dir },
    );
    t.equal(result.code, 0, `fio ${bs} exits 0: ${result.stderr.slice(0, 500)}`);
    const job = (
      JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as {
        jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }>;
      }
    ).jobs[0];
    t.equal(job.error, 0, `fio ${bs}: no job error`);
    t.equal(job.write.io_bytes, 64 * MiB, `fio ${bs}: wrote the whole export`);
    t.equal(job.read.io_bytes, 64 * MiB, `fio ${bs}: read every block back for verification`);
  }
  // The verify must be able to fail: corrupt one written block behind the server's back.
  const fd = fs.openSync(image, 'r+');
  fs.writeSync(fd, Buffer.alloc(4096, 0x99), 0, 4096, 8 * MiB);
  fs.closeSync(fd);
  const corrupt = await run(
    'fio',
    [
      '--name=verify-only',
      '--ioengine=nbd',
      `--uri=${ferry.uri()}`,
      '--rw=randwrite',
      '--bs=64k',
      '--iodepth=16',
      '--size=64M',
      '--verify=crc32c',
      '--verify_only',
      '--verify_fatal=1',
      '--randrepeat=0',
      '--verify_state_save=0',
    ],
    { timeoutMs: 120_000, cwd: dir },
  );
  t.not(corrupt.code, 0, 'a corrupted block fails verification');
});
