/**
 * The source cuts a FETCH into BATCH frames of the size the destination
 * asked for in HELLO (copy.batch_blocks), up to the frame limit.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { CodecPool } from '../src/pool';
import { CodecChooser } from '../src/wire/codec-chooser';
import { Role, WIRE_VERSION, WireEncoding } from '../src/wire/protocol';
import { WireSourceServer } from '../src/wire/source-server';
import { SingleSourceExport } from '../src/wire/source-exports';
import { SourceImage } from '../src/wire/source-image';
import { type BatchFrame, WireStream } from '../src/wire/wire-stream';
import { tempDir } from './helpers/temp-dir';

async function batchCounts(t: Test, blockSize: number, maxBatchBlocks: number, length: number): Promise<number[]> {
  const dir = tempDir(t, 'ferry-batch-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(length, 7));
  const pool = new CodecPool({ workers: 1, codec: 'none' });
  const auth = { kind: 'insecure' } as const;
  const log = pino({ level: 'silent' });
  const source = SourceImage.open({
    name: 'disk.img',
    image: image,
    writes: 'read-only',
    stateDir: dir,
    maxSessions: 64,
    log,
  });
  const server = new WireSourceServer({
    exports: new SingleSourceExport(source),
    auth,
    pool,
    chooser: new CodecChooser('none', ['none'], 1),
    log,
  });
  t.teardown(async () => {
    await server.close();
    await pool.close();
    await source.close();
  });
  const address = await server.listen('127.0.0.1', 0);
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  const stream = await WireStream.open(
    auth,
    '127.0.0.1',
    port,
    {
      version: WIRE_VERSION,
      role: Role.Background,
      blockSize,
      maxBatchBlocks,
      encodings: [WireEncoding.Zero, WireEncoding.Raw],
      exportName: 'disk.img',
      session: 'batch-size-test',
      identity: '',
    },
    60_000,
    // Frames of a loaded machine may be late by many seconds: only a closed stream may fail this test.
    3_600_000,
  );
  t.teardown(() => stream.destroy());
  const frames: BatchFrame[] = [];
  await stream.fetch(Role.Background, 0, 0, length, (b) => frames.push(b));
  return frames.map((f) => f.meta.count);
}

t.test('batches hold copy.batch_blocks blocks, also above 64', async (t) => {
  t.same(await batchCounts(t, 4096, 256, 512 * 4096), [256, 256]);
  t.same(await batchCounts(t, 4096, 32, 128 * 4096), [32, 32, 32, 32]);
});
