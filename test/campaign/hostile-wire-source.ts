/**
 * A ferry source the test controls, speaking the real wire through the
 * product's encoders: honest (every FETCH answered with the image's blocks
 * in batches of mixed encodings, references within a batch, zeros as holes)
 * or hostile, each connection given one fault of FAULTS.
 *
 * A hostile answer never makes a coherent false claim the destination could
 * not tell from the truth (that is what authentication is for): bytes it
 * sends as a block's carry that block's true checksum, or a wrong one, or
 * are claimed for blocks nobody asked for. So any wrong byte the destination
 * keeps is its own fault. The one exception is deliberate: after a WELCOME
 * naming another image (identity or size), the connection serves that other
 * image, coherently: the destination must refuse the stream, not its blocks.
 */
import net from 'node:net';
import zlib from 'node:zlib';
import { createWireServer, type WireAuth } from '../../src/wire/auth';
import { encodeFrameHead, encodePreamble, FrameDecoder } from '../../src/wire/frame-codec';
import {
  decodeFetch,
  decodeHello,
  decodeZeroQuery,
  encodeBatchHead,
  encodeBlockHashes,
  encodeCutover,
  encodeDirty,
  encodeFetchError,
  encodeRefuse,
  encodeWelcome,
  encodeZeroRanges,
  type BatchMeta,
  type Fetch,
  type Hello,
  type WireEntry,
} from '../../src/wire/messages';
import { FetchFlag, MAX_PAYLOAD, MessageType, RefuseCode, WIRE_VERSION, WireEncoding } from '../../src/wire/protocol';
import { lz4Compress, xxh64 } from '../../src/kernels';

export const FAULTS = [
  'noise',
  'bit-flip',
  'lying-length',
  'truncated',
  'unknown-type',
  'batch-out-of-range',
  'batch-count',
  'reference-not-held',
  'bad-checksum',
  'batch-sizes',
  'oversized-payload',
  'unasked-replies',
  'duplicate-replies',
  'welcome-identity',
  'welcome-size',
  'welcome-version',
  'refuse',
  'stall',
  'huge-compressed-length',
  'lz4-bomb',
  'deflate-bomb',
  'bad-reports',
  'fetch-error',
] as const;
export type Fault = (typeof FAULTS)[number];

type Random = () => number;

/** One BATCH before it is framed: the blocks' entries and payloads. */
interface Batch {
  meta: BatchMeta;
  payloads: Buffer[];
  final: boolean;
}

export interface HostileSourceCounts {
  connections: number;
  hostile: number;
  frames: number;
  byFault: Partial<Record<Fault, number>>;
}

export class HostileWireSource {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  /** Faults new connections get (one each, drawn at random); empty: honest. */
  private faults: readonly Fault[] = [];
  readonly counts: HostileSourceCounts = { connections: 0, hostile: 0, frames: 0, byFault: {} };
  /** Another image, served after a WELCOME that names it. */
  private readonly other: Buffer;
  private bombs: { lz4: Buffer; deflate: Buffer } | null = null;
  private oversized: Buffer | null = null;

  constructor(
    private readonly image: Buffer,
    private readonly identity: string,
    private readonly auth: WireAuth,
    private readonly random: Random,
  ) {
    this.other = Buffer.from(image);
    for (let i = 0; i < this.other.length; i += 4096) this.other[i] ^= 0x5a;
  }

  async start(): Promise<number> {
    const server = createWireServer(
      this.auth,
      { handshakeTimeoutMs: 10_000 },
      (socket) => this.accept(socket),
      () => undefined,
    );
    this.server = server;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as net.AddressInfo).port;
  }

  /** From now on new connections are honest (hostile: given one of `faults` each, in turn); open ones are cut. */
  setFaults(faults: readonly Fault[]): void {
    this.faults = faults;
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setNoDelay(true);
    this.counts.connections++;
    // In turn, so that every fault of a burst meets the destination.
    const fault = this.faults.length ? this.faults[this.counts.connections % this.faults.length] : null;
    if (fault) {
      this.counts.hostile++;
      this.counts.byFault[fault] = (this.counts.byFault[fault] ?? 0) + 1;
    }
    new Connection(this, socket, fault).start();
  }

  /** Sends a frame (or any bytes) unless the socket is gone. */
  send(socket: net.Socket, bytes: Buffer): void {
    if (socket.destroyed) return;
    this.counts.frames++;
    socket.write(bytes);
  }

  get rand(): Random {
    return this.random;
  }

  imageFor(fault: Fault | null): Buffer {
    return fault === 'welcome-identity' || fault === 'welcome-size' ? this.other : this.image;
  }

  welcomeFor(fault: Fault | null): { identity: string; imageSize: number; version: number } {
    const w = { identity: this.identity, imageSize: this.image.length, version: WIRE_VERSION };
    if (fault === 'welcome-identity') w.identity = this.pick(['', 'another-image', this.identity + 'x']);
    if (fault === 'welcome-size')
      w.imageSize = this.pick([this.image.length * 2, this.image.length - 4096, 0, 2 ** 53 - 1, 4095]);
    if (fault === 'welcome-version') w.version = this.pick([1, 3, 0xffff]);
    return w;
  }

  /** A decompression bomb of each codec: a stream far larger than any block once inflated. */
  bomb(kind: 'lz4' | 'deflate'): Buffer {
    if (!this.bombs) {
      const huge = Buffer.alloc(16 << 20, 0x61);
      this.bombs = { lz4: Buffer.from(lz4Compress(huge)), deflate: zlib.deflateRawSync(huge, { level: 9 }) };
    }
    return this.bombs[kind];
  }

  /** A payload of the largest size the framing allows (its bytes do not matter: no entry covers them). */
  oversizedPayload(): Buffer {
    this.oversized ??= Buffer.alloc(MAX_PAYLOAD);
    return this.oversized;
  }

  /** Random bytes. */
  noise(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** One connection of the fake source. */
class Connection {
  private readonly decoder = new FrameDecoder();
  private hello: Hello | null = null;
  /** FETCH request ids seen and answered in full. */
  private readonly answered: number[] = [];
  private highestId = 0;

  constructor(
    private readonly source: HostileWireSource,
    private readonly socket: net.Socket,
    private readonly fault: Fault | null,
  ) {}

  start(): void {
    this.socket.on('data', (chunk: Buffer) => {
      this.decoder.push(chunk);
      for (let e = this.decoder.next(); e; e = this.decoder.next()) {
        if (e.kind === 'corrupt') return this.socket.destroy();
        if (e.kind === 'frame') this.onFrame(e.frame.type, e.frame.meta);
      }
    });
  }

  private int(n: number): number {
    return Math.floor(this.source.rand() * n);
  }

  private pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  private send(bytes: Buffer): void {
    this.source.send(this.socket, bytes);
  }

  private onFrame(type: number, meta: Buffer): void {
    if (type === MessageType.Hello) {
      const hello = decodeHello(meta);
      if (typeof hello === 'string') return void this.socket.destroy();
      this.hello = hello;
      return this.welcome();
    }
    if (!this.hello) return void this.socket.destroy();
    if (type === MessageType.Fetch) {
      const f = decodeFetch(meta);
      if (typeof f === 'string') return void this.socket.destroy();
      this.highestId = Math.max(this.highestId, f.requestId);
      return this.answer(f);
    }
    if (type === MessageType.ZeroQuery) {
      // Nothing is known to be zero: an answer that is always true.
      const q = decodeZeroQuery(meta);
      if (typeof q === 'string') return void this.socket.destroy();
      this.send(encodeZeroRanges({ requestId: q.requestId, offset: q.offset, covered: q.length, ranges: [] }));
    }
    // DIRTY_ACK, CUTOVER_REQUEST: this source tracks nothing.
  }

  private welcome(): void {
    const fault = this.fault;
    const hello = this.hello!;
    const w = this.source.welcomeFor(fault);
    if (fault === 'noise') {
      if (this.source.rand() < 0.5) return this.send(this.source.noise(1 + this.int(4096)));
      this.send(encodePreamble());
      this.send(this.source.noise(1 + this.int(4096)));
      return;
    }
    if (fault === 'refuse') {
      // Not IdentityMismatch: the destination rightly stops for good on that one.
      this.send(encodePreamble());
      const code = this.pick([RefuseCode.Version, RefuseCode.UnknownExport, RefuseCode.BadRequest, 99]);
      this.send(encodeRefuse({ code, reason: 'x'.repeat(this.int(1000)) }));
      return;
    }
    if (!fault && hello.identity && hello.identity !== w.identity) {
      this.send(encodePreamble());
      this.send(encodeRefuse({ code: RefuseCode.IdentityMismatch, reason: 'another image' }));
      return;
    }
    this.send(
      encodePreamble(fault === 'welcome-version' && this.source.rand() < 0.5 ? w.version & 0xff : WIRE_VERSION),
    );
    this.send(
      encodeWelcome({
        version: w.version,
        imageSize: w.imageSize,
        identity: w.identity,
        codec: 'lz4',
        tracking: 0,
        trackingEpoch: '',
      }),
    );
    if (fault === 'bad-reports') this.badReports();
  }

  /** The true answer to a FETCH: batches of at most maxBatchBlocks, mixed encodings, the last Final. */
  private honestBatches(f: Fetch, image: Buffer): Batch[] {
    const bs = this.hello!.blockSize;
    const maxBlocks = Math.max(1, Math.min(this.hello!.maxBatchBlocks, 256));
    const end = Math.min(f.offset + f.length, image.length);
    const count = Math.ceil((end - f.offset) / bs);
    const references = (f.flags & FetchFlag.NoReferences) === 0;
    const batches: Batch[] = [];
    for (let first = 0; first < count; first += maxBlocks) {
      const n = Math.min(maxBlocks, count - first);
      const offset = f.offset + first * bs;
      const entries: WireEntry[] = [];
      const payloads: Buffer[] = [];
      const seen = new Map<bigint, number>();
      for (let i = 0; i < n; i++) {
        const block = Buffer.alloc(bs);
        image.copy(block, 0, offset + i * bs, Math.min(offset + (i + 1) * bs, image.length));
        const checksum = xxh64(block);
        const earlier = seen.get(checksum);
        if (references && earlier !== undefined) {
          entries.push({ encoding: WireEncoding.Reference, length: 0, checksum, reference: earlier });
          payloads.push(Buffer.alloc(0));
          continue;
        }
        seen.set(checksum, offset / bs + i);
        const { encoding, payload } = this.encodeBlock(block);
        entries.push({ encoding, length: payload.length, checksum, reference: 0 });
        payloads.push(payload);
      }
      const lastLength = Math.min(bs, end - (offset + (n - 1) * bs));
      batches.push({
        meta: { requestId: f.requestId, offset, count: n, lastLength, entries },
        payloads,
        final: first + n >= count,
      });
    }
    return batches;
  }

  private encodeBlock(block: Buffer): { encoding: WireEncoding; payload: Buffer } {
    if (block.every((b) => b === 0)) return { encoding: WireEncoding.Zero, payload: Buffer.alloc(0) };
    const choice = this.int(3);
    if (choice === 1) {
      const lz4 = Buffer.from(lz4Compress(block));
      if (lz4.length < block.length) return { encoding: WireEncoding.Lz4, payload: lz4 };
    }
    if (choice === 2) {
      const deflated = zlib.deflateRawSync(block, { level: 1 });
      if (deflated.length < block.length) return { encoding: WireEncoding.Deflate, payload: deflated };
    }
    return { encoding: WireEncoding.Raw, payload: block };
  }

  private frame(b: Batch): Buffer {
    const payload = Buffer.concat(b.payloads);
    return Buffer.concat([encodeBatchHead(b.meta, b.final, payload.length), payload]);
  }

  /** A BATCH frame from raw metadata (mutated), with a CRC that holds. */
  private rawBatch(meta: Buffer, final: boolean, payload: Buffer): Buffer {
    return Buffer.concat([encodeFrameHead(MessageType.Batch, final ? 1 : 0, meta, payload.length), payload]);
  }

  private answer(f: Fetch): void {
    const fault = this.fault;
    const bs = this.hello!.blockSize;
    const image = this.source.imageFor(fault);
    if (f.offset % bs !== 0 || f.offset >= image.length || f.length === 0) {
      this.send(encodeFetchError({ requestId: f.requestId, code: 1, reason: 'out of range' }));
      return;
    }
    if (fault === 'stall') return;
    const batches = this.honestBatches(f, image);
    const honest = (): void => {
      for (const b of batches) this.send(this.frame(b));
      this.answered.push(f.requestId);
    };
    if (!fault || fault === 'welcome-identity' || fault === 'welcome-size' || fault === 'welcome-version')
      return honest();
    // Most faults hit one FETCH in a few, so that the streams also carry good batches between them.
    if (this.source.rand() < 0.3 && fault !== 'duplicate-replies' && fault !== 'unasked-replies') return honest();
    switch (fault) {
      case 'noise':
        this.send(this.source.noise(1 + this.int(8192)));
        return;
      case 'bit-flip': {
        const bytes = Buffer.concat(batches.map((b) => this.frame(b)));
        for (let i = 0, n = 1 + this.int(3); i < n; i++) bytes[this.int(bytes.length)] ^= 1 << this.int(8);
        this.send(bytes);
        return;
      }
      case 'lying-length': {
        const frame = this.frame(batches[0]);
        const field = this.pick([0, 4]);
        const actual = frame.readUInt32BE(field);
        frame.writeUInt32BE(
          this.pick([
            2 ** 32 - 1,
            MAX_PAYLOAD + 1,
            actual + 1 + this.int(100),
            Math.max(0, actual - 1 - this.int(100)),
          ]) >>> 0,
          field,
        );
        this.send(frame);
        return;
      }
      case 'truncated': {
        const frame = this.frame(batches[0]);
        this.send(frame.subarray(0, this.int(frame.length)));
        if (this.source.rand() < 0.5) this.socket.end();
        return;
      }
      case 'unknown-type': {
        const type = this.pick([0, 15, 16, 200, 255, MessageType.Hello, MessageType.Fetch, MessageType.DirtyAck]);
        this.send(encodeFrameHead(type, this.int(256), this.source.noise(this.int(64)), 0));
        return honest();
      }
      case 'batch-out-of-range': {
        // Claims blocks the FETCH did not ask for, carrying the asked ones' bytes (true checksums).
        const b = batches[0];
        const asked = f.length;
        b.meta.offset = this.pick([
          f.offset + asked + bs * this.int(4), // after the request
          f.offset + bs * Math.max(1, b.meta.count - 1), // starting inside, running past its end
          f.offset + 1 + this.int(bs - 1), // not on a block boundary
          image.length + bs * this.int(4), // past the image
          2 ** 53 - bs, // near the largest offset
          Math.max(0, f.offset - bs * (b.meta.count + this.int(4))), // before the request
        ]);
        // A run inside the request would be a claim about asked blocks: move it past the request's end.
        const inside =
          b.meta.offset % bs === 0 &&
          b.meta.offset >= f.offset &&
          b.meta.offset + b.meta.count * bs <= f.offset + asked;
        if (inside) b.meta.offset = f.offset + asked;
        this.send(this.frame(b));
        return;
      }
      case 'batch-count': {
        const b = batches[0];
        const meta = encodeBatchHead(b.meta, b.final, 0).subarray(16);
        const count = this.pick([0, b.meta.count + 1, b.meta.count - 1, 2 ** 32 - 1, 65_535]) >>> 0;
        const copy = Buffer.from(meta);
        copy.writeUInt32BE(count, 12);
        this.send(this.rawBatch(copy, b.final, Buffer.concat(b.payloads)));
        return;
      }
      case 'reference-not-held': {
        // Each entry (its own true checksum) names a block: far away, past the image, not yet copied, itself.
        for (const b of batches) {
          for (let i = 0; i < b.meta.entries.length; i++) {
            if (this.source.rand() < 0.5) continue;
            const e = b.meta.entries[i];
            const here = b.meta.offset / bs + i;
            e.encoding = WireEncoding.Reference;
            e.length = 0;
            e.reference = this.pick([
              here,
              here + 1,
              this.int(image.length / bs),
              image.length / bs + this.int(100),
              2 ** 32 + this.int(1000),
              2 ** 48 - 1,
            ]);
            b.payloads[i] = Buffer.alloc(0);
          }
          this.send(this.frame(b));
        }
        this.answered.push(f.requestId);
        return;
      }
      case 'bad-checksum': {
        for (const b of batches) {
          for (const e of b.meta.entries) if (this.source.rand() < 0.3) e.checksum ^= BigInt(1 + this.int(2 ** 30));
          this.send(this.frame(b));
        }
        return;
      }
      case 'batch-sizes': {
        const b = batches[0];
        const payload = Buffer.concat(b.payloads);
        const kind = this.int(3);
        if (kind === 0) {
          // Entry lengths that do not add up to the payload.
          const e = this.pick(b.meta.entries);
          e.length = this.pick([e.length + 1, Math.max(0, e.length - 1), 0, 2 ** 32 - 1, bs * 2]) >>> 0;
          const meta = encodeBatchHead(b.meta, b.final, 0).subarray(16);
          this.send(this.rawBatch(Buffer.from(meta), b.final, payload));
        } else {
          // A payload longer or shorter than its entries say.
          const extra = kind === 1 ? this.source.noise(1 + this.int(bs)) : Buffer.alloc(0);
          const body = kind === 1 ? Buffer.concat([payload, extra]) : payload.subarray(0, this.int(payload.length));
          const meta = encodeBatchHead(b.meta, b.final, 0).subarray(16);
          this.send(this.rawBatch(Buffer.from(meta), b.final, body));
        }
        return;
      }
      case 'oversized-payload': {
        // The largest payload the framing allows, for a FETCH of a few blocks.
        const b = batches[0];
        const meta = encodeBatchHead(b.meta, b.final, 0).subarray(16);
        // One buffer for every such frame, written after the header: this process's own copying must not slow the probes.
        this.send(encodeFrameHead(MessageType.Batch, b.final ? 1 : 0, Buffer.from(meta), MAX_PAYLOAD));
        this.send(this.source.oversizedPayload());
        return;
      }
      case 'unasked-replies': {
        // Replies to requests never made (or long finished), carrying the wrong blocks' bytes for the asked offsets.
        const wrong = this.honestBatches({ ...f, offset: (f.offset + bs * 7) % image.length }, image)[0];
        const ids = [0, this.highestId + 1000 + this.int(1000), 2 ** 32 - 1, ...this.answered.slice(-3)];
        for (const id of ids) {
          this.send(this.frame({ ...wrong, meta: { ...wrong.meta, requestId: id, offset: f.offset } }));
          this.send(encodeZeroRanges({ requestId: id, offset: f.offset, covered: bs, ranges: [] }));
          this.send(encodeBlockHashes({ requestId: id, offset: f.offset, count: 1, hashes: Buffer.alloc(32) }));
          this.send(encodeFetchError({ requestId: id, code: 2, reason: 'unasked' }));
        }
        return honest();
      }
      case 'duplicate-replies': {
        // Every batch twice, and again after the final one.
        for (const b of batches) {
          this.send(this.frame(b));
          this.send(this.frame(b));
        }
        for (const b of batches) this.send(this.frame(b));
        this.answered.push(f.requestId);
        return;
      }
      case 'huge-compressed-length': {
        const b = batches[0];
        const i = this.int(b.meta.entries.length);
        const e = b.meta.entries[i];
        e.encoding = this.pick([WireEncoding.Lz4, WireEncoding.Deflate]);
        e.length = this.pick([2 ** 32 - 1, 2 ** 31, MAX_PAYLOAD, bs + 1]);
        const meta = encodeBatchHead(b.meta, b.final, 0).subarray(16);
        this.send(this.rawBatch(Buffer.from(meta), b.final, Buffer.concat(b.payloads)));
        return;
      }
      case 'lz4-bomb':
      case 'deflate-bomb': {
        // One block's payload inflates to 16 MiB; its checksum is the block's true one.
        const b = batches[0];
        const i = this.int(b.meta.entries.length);
        const bomb = this.source.bomb(fault === 'lz4-bomb' ? 'lz4' : 'deflate');
        b.meta.entries[i] = {
          ...b.meta.entries[i],
          encoding: fault === 'lz4-bomb' ? WireEncoding.Lz4 : WireEncoding.Deflate,
          length: bomb.length,
        };
        b.payloads[i] = bomb;
        this.send(this.frame(b));
        for (const rest of batches.slice(1)) this.send(this.frame(rest));
        return;
      }
      case 'bad-reports':
        this.badReports();
        return honest();
      case 'fetch-error':
        this.send(encodeFetchError({ requestId: f.requestId, code: this.int(65_536), reason: 'no' }));
        return;
    }
  }

  /** DIRTY and CUTOVER frames from a source that said it tracks nothing: misaligned, past the image, and plausible. */
  private badReports(): void {
    const bs = this.hello!.blockSize;
    const size = this.source.imageFor(null).length;
    const range = (): { offset: number; length: number } =>
      this.pick([
        { offset: 1, length: bs },
        { offset: size, length: bs },
        { offset: 2 ** 52, length: 2 ** 52 },
        { offset: this.int(size / bs) * bs, length: bs },
        { offset: 0, length: size },
      ]);
    const seq = this.int(2 ** 32);
    this.send(encodeDirty({ seq, ranges: [range()] }));
    this.send(encodeCutover({ seq: seq + 1, ranges: [range()] }, this.source.rand() < 0.5));
  }
}
