/**
 * Serves one FETCH as BATCHes: read the range batch by batch, learn which
 * blocks are zeros or repeats of blocks this session already sent, encode the
 * rest on the worker pool (urgent fetches ahead of background ones), and send
 * the repeats as references.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { BatchCodec } from '../codec/batch-codec';
import { whenQueued, type CodecPool, type EncodeResult } from '../pool';
import type { BlockDevice } from '../store/block-device';
import { batchBlocksLimit } from '../util/limits';
import type { BatchBuffers } from './batch-buffers';
import type { CodecChooser } from './codec-chooser';
import type { DedupeTable } from './dedupe-table';
import { toWireEncoding } from './encoding-map';
import { encodeBatchHead, encodeFetchError, type Fetch, type Hello, type WireEntry } from './messages';
import { FetchErrorCode, FetchFlag, Role, WireEncoding } from './protocol';

/** What serving a fetch needs from the connection it came on. */
export interface FetchLink {
  readonly dead: boolean;
  /** Sends frames; `written` runs once the socket no longer needs their bytes (not at all if it never writes them). */
  send(parts: Buffer[], written?: () => void): void;
  /** Resolves once the socket has room again (at once when it has). */
  roomToWrite(): Promise<void>;
  /** Reserves the session's pace for a background batch of `bytes`; the ms to wait before sending it (0: now). */
  paceDelay(bytes: number): number;
}

export interface FetchServices {
  device: BlockDevice;
  pool: CodecPool;
  chooser: CodecChooser;
  /** Hashes batches on this thread, before they go to the pool. */
  hasher: BatchCodec;
  buffers: BatchBuffers;
  /** Every tally a fetch counts in: the server's totals and its export's. */
  counters: FetchCounters[];
  log: Logger;
}

export interface FetchCounters {
  batches: number;
  bytesRead: number;
  bytesSent: number;
  references: number;
}

/** The reason a FETCH cannot be served as asked, or null. */
export function fetchProblem(fetch: Fetch, blockSize: number, imageSize: number, maxFetchBytes: number): string | null {
  const bs = blockSize;
  if (fetch.offset % bs !== 0) return `offset ${fetch.offset} is not a multiple of the block size ${bs}`;
  if (fetch.length === 0 || fetch.length > maxFetchBytes) return `length ${fetch.length} is not 1..${maxFetchBytes}`;
  if (fetch.offset + fetch.length > imageSize) {
    return `range ${fetch.offset}+${fetch.length} is beyond the image (${imageSize} bytes)`;
  }
  if (fetch.offset + fetch.length < imageSize && fetch.length % bs !== 0) {
    return `length ${fetch.length} is not a multiple of the block size ${bs}`;
  }
  return null;
}

export async function serveFetch(
  fetch: Fetch,
  hello: Hello,
  dedupe: DedupeTable,
  link: FetchLink,
  services: FetchServices,
  maxFetchBytes: number,
): Promise<void> {
  const { device, counters } = services;
  const bs = hello.blockSize;
  const problem = fetchProblem(fetch, bs, device.size, maxFetchBytes);
  if (problem) {
    const code = problem.includes('beyond') ? FetchErrorCode.OutOfRange : FetchErrorCode.BadRequest;
    link.send([encodeFetchError({ requestId: fetch.requestId, code, reason: problem })]);
    return;
  }
  const urgent = fetch.priority === Role.Urgent;
  const references = !(fetch.flags & FetchFlag.NoReferences);
  const firstBlock = fetch.offset / bs;
  const blocks = Math.ceil(fetch.length / bs);
  const perBatch = Math.min(hello.maxBatchBlocks, batchBlocksLimit(bs));
  for (let done = 0; done < blocks && !link.dead; done += perBatch) {
    const count = Math.min(perBatch, blocks - done);
    const offset = (firstBlock + done) * bs;
    const bytes = Math.min(count * bs, device.size - offset);
    // Wait while the peer is slow to read: bounded memory, and the pool is not fed for nothing.
    await link.roomToWrite();
    if (link.dead) return;
    const buffer = services.buffers.take(count * bs);
    // A short tail block is padded with zeros (a recycled buffer holds old bytes there).
    if (bytes < count * bs) new Uint8Array(buffer, bytes).fill(0);
    try {
      await device.read(offset, Buffer.from(buffer, 0, bytes));
    } catch (e) {
      services.buffers.give(buffer);
      link.send([
        encodeFetchError({ requestId: fetch.requestId, code: FetchErrorCode.ReadError, reason: (e as Error).message }),
      ]);
      return;
    }
    for (const c of counters) c.bytesRead += bytes;
    const learned: Array<[bigint, number]> = [];
    const repeats = references
      ? findRepeats(buffer, bs, firstBlock + done, dedupe, services.hasher, learned)
      : undefined;
    const codec = services.chooser.current;
    let encoded: EncodeResult;
    try {
      // Waits (not fails) while the pool's bounded queue is full.
      encoded = await whenQueued(services.pool, () => services.pool.encode(buffer, bs, { urgent, codec }), urgent);
    } catch (e) {
      // These blocks are not sent: later repeats must not refer to them.
      for (const [checksum, block] of learned) dedupe.forget(checksum, block);
      throw e;
    }
    services.chooser.recordEncode(codec, bytes, encoded.payload.length, encoded.workerMs);
    const entries: WireEntry[] = encoded.entries.map((e) => ({
      encoding: toWireEncoding(e.encoding),
      length: e.length,
      checksum: e.checksum,
      reference: 0,
    }));
    if (repeats) {
      for (const [i, { block, checksum }] of repeats) {
        entries[i] = { encoding: WireEncoding.Reference, length: 0, checksum, reference: block };
      }
      for (const c of counters) c.references += repeats.size;
    }
    const payload = Buffer.from(encoded.payload.buffer, encoded.payload.byteOffset, encoded.payload.byteLength);
    const final = done + count >= blocks;
    const head = encodeBatchHead(
      { requestId: fetch.requestId, offset, count, lastLength: bytes - (count - 1) * bs, entries },
      final,
      payload.length,
    );
    const carrier = encoded.payload.buffer as ArrayBuffer;
    // Background batches leave at the pace the destination asked for; urgent ones at once.
    const wait = urgent ? 0 : link.paceDelay(head.length + payload.length);
    if (wait > 0) await delay(wait, undefined, { ref: false }); // a source shutting down does not wait for it
    link.send([head, payload], () => services.buffers.give(carrier));
    for (const c of counters) {
      c.batches++;
      c.bytesSent += head.length + payload.length;
    }
  }
}

/**
 * Blocks of the batch whose content this session already sent, by index:
 * the block that carried it and the checksum. Learned before compression
 * (hashing costs a small fraction of compressing), and each repeat's bytes
 * are zeroed in `buffer`, so the pool codes it as a zero block for nothing
 * instead of compressing bytes that will not be sent.
 */
function findRepeats(
  buffer: ArrayBuffer,
  bs: number,
  firstBlock: number,
  dedupe: DedupeTable,
  hasher: BatchCodec,
  learned: Array<[bigint, number]>,
): Map<number, { block: number; checksum: bigint }> {
  const blocks = new Uint8Array(buffer);
  const { checksums, zero } = hasher.hash(blocks, bs);
  const repeats = new Map<number, { block: number; checksum: bigint }>();
  for (let i = 0; i < checksums.length; i++) {
    if (zero[i]) continue;
    const seen = dedupe.lookupOrAdd(checksums[i], firstBlock + i);
    if (seen < 0) {
      learned.push([checksums[i], firstBlock + i]);
      continue;
    }
    repeats.set(i, { block: seen, checksum: checksums[i] });
    blocks.fill(0, i * bs, (i + 1) * bs);
  }
  return repeats;
}
