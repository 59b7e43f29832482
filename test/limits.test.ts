import t from 'tap';
import { checkBlockSize } from '../src/codec/batch';
import { loadConfig } from '../src/config/load';
import { MAX_PAYLOAD } from '../src/wire/protocol';
import {
  batchBlocksLimit,
  blockSizeProblem,
  MAX_BATCH_BLOCKS,
  MAX_BATCH_BYTES,
  MAX_BLOCK_SIZE,
  MIN_BLOCK_SIZE,
} from '../src/util/limits';

t.test('block sizes: powers of two from 512 B to 1 MiB, the same for the config and the code', async (t) => {
  for (const ok of [MIN_BLOCK_SIZE, 4096, MAX_BLOCK_SIZE]) {
    t.equal(blockSizeProblem(ok), undefined, `${ok}`);
    t.doesNotThrow(() => checkBlockSize(ok, 'x'));
    t.equal(loadConfig(undefined, { 'dest.block_size': ok }).dest.block_size, ok);
  }
  for (const bad of [256, 1000, 2 * MAX_BLOCK_SIZE, 4.5]) {
    t.equal(blockSizeProblem(bad), 'must be a power of two from 512 to 1048576', `${bad}`);
    t.throws(() => checkBlockSize(bad, 'x'), /x: blockSize must be a power of two from 512 to 1048576/);
    t.throws(
      () => loadConfig(undefined, { 'dest.block_size': bad }),
      /config: dest\.block_size must be a power of two from 512 to 1048576/,
    );
  }
});

t.test('a full batch fits one BATCH frame', async (t) => {
  t.ok(MAX_BATCH_BYTES <= MAX_PAYLOAD, 'the batch limit is within the frame payload limit');
  t.ok(batchBlocksLimit(MAX_BLOCK_SIZE) >= 1, 'a batch of the largest blocks holds at least one');
  t.equal(batchBlocksLimit(4096), MAX_BATCH_BLOCKS);
  t.equal(batchBlocksLimit(MAX_BLOCK_SIZE), 64);
});

t.test('the config refuses batches larger than a frame, naming both keys', async (t) => {
  t.equal(loadConfig(undefined, { 'dest.block_size': 1 << 20, 'copy.batch_blocks': 64 }).copy.batch_blocks, 64);
  t.throws(
    () => loadConfig(undefined, { 'dest.block_size': 1 << 20, 'copy.batch_blocks': 128 }),
    /config: copy\.batch_blocks must be at most 64 with dest\.block_size 1048576 \(a batch holds at most 67108864 bytes\) \(got 128\)/,
  );
  t.equal(loadConfig(undefined, { 'copy.batch_blocks': 1024 }).copy.batch_blocks, 1024, '1024 blocks of 4 KiB');
});
