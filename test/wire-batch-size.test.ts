/**
 * The source cuts a FETCH into BATCH frames of the size the destination
 * asked for in HELLO (copy.batch_blocks), up to the frame limit.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Role, WIRE_VERSION, WireEncoding } from '../src/wire/protocol';
import { type BatchFrame, WireStream } from '../src/wire/wire-stream';
import { tempDir } from './helpers/temp-dir';
import { startWireSource } from './helpers/wire-source';

async function batchCounts(t: Test, blockSize: number, maxBatchBlocks: number, length: number): Promise<number[]> {
  const dir = tempDir(t, 'ferry-batch-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(length, 7));
  const auth = { kind: 'insecure' } as const;
  const source = await startWireSource(image, dir, auth);
  t.teardown(() => source.close());
  const port = source.port;
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
