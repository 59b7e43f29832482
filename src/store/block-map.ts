/**
 * The destination's persistent record of which blocks it holds: a header
 * (source identity, image size, block size, phase, completion) and one bit
 * per block.
 *
 * A set bit is written only after the block's data was made durable
 * (persist() syncs the image first), so a torn bitmap write can lose progress
 * but never claim data that is not there. A bit is cleared (before cutover,
 * when the source reports it wrote the block) in memory first; the source is
 * told only after a persist() has written the cleared bit, so a crash before
 * that finds the bit set and the source still reporting the write.
 * The header lives in two slots with a generation number, so rewriting it can
 * never leave no valid header.
 *
 * Only one owner changes bits: whoever takes the BitWriter (the block-state
 * table of the migrating device). Everyone else reads.
 */
import fs from 'node:fs';
import nodePath from 'node:path';
import zlib from 'node:zlib';
import { blockSizeProblem } from '../util/limits';
import { syncDirectory } from '../util/sync-directory';

const MAGIC = 'FERRYMAP';
const VERSION = 2;
/** Version 1 maps (before phases) were always copied after cutover: they open as post-copy. */
const OLDEST_VERSION = 1;
const HEADER_SLOT = 2048;
const HEADER_AREA = 2 * HEADER_SLOT;
const PAGE = 4096;
const MAX_TEXT = 900;
/** Room for the tracking epoch and the session id. */
const MAX_SHORT_TEXT = 64;

/**
 * Before cutover the source is the authority for every block ('warming');
 * after it, the destination ('post-copy'). Completion is recorded apart.
 */
export type MapPhase = 'warming' | 'post-copy';

export interface BlockMapHeader {
  blockSize: number;
  imageSize: number;
  /** Stable identity of the source image this destination copies. */
  sourceIdentity: string;
  /** The source as the operator named it (for messages only). */
  sourceUrl: string;
  complete: boolean;
  phase: MapPhase;
  /** The source's write-tracking lifetime the held blocks were copied under ('' if none). */
  trackingEpoch: string;
  /** This destination's session id at the source (stable across restarts). */
  session: string;
}

/** The one way to change bits; handed out once. */
export interface BitWriter {
  /** Marks a block held in memory, after its data was written to the image; it reaches disk at the next persist(). */
  setHeld(block: number): void;
  /** Marks a held block missing again in memory; it reaches disk at the next persist(). */
  clearHeld(block: number): void;
}

export class BlockMapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BlockMapError';
  }
}

export class BlockMap {
  readonly blockCount: number;
  private readonly bits: Uint8Array;
  private held = 0;
  private readonly dirtyPages = new Set<number>();
  private generation: number;
  private persisting: Promise<void> = Promise.resolve();
  private writerTaken = false;
  private headerWrites: Promise<void> = Promise.resolve();

  private constructor(
    private filePath: string,
    private readonly fd: number,
    private header: BlockMapHeader,
    generation: number,
    bits: Uint8Array,
  ) {
    this.blockCount = Math.ceil(header.imageSize / header.blockSize);
    this.bits = bits;
    this.generation = generation;
    for (let i = 0; i < this.blockCount; i++) if (this.isHeld(i)) this.held++;
  }

  /** Where the map lives (a new map moves once, from its creation name to its own). */
  get path(): string {
    return this.filePath;
  }
  get blockSize(): number {
    return this.header.blockSize;
  }
  get imageSize(): number {
    return this.header.imageSize;
  }
  get sourceIdentity(): string {
    return this.header.sourceIdentity;
  }
  get sourceUrl(): string {
    return this.header.sourceUrl;
  }
  get complete(): boolean {
    return this.header.complete;
  }
  get phase(): MapPhase {
    return this.header.phase;
  }
  get trackingEpoch(): string {
    return this.header.trackingEpoch;
  }
  get session(): string {
    return this.header.session;
  }
  get heldCount(): number {
    return this.held;
  }
  get allHeld(): boolean {
    return this.held === this.blockCount;
  }

  static exists(path: string): boolean {
    return fs.existsSync(path);
  }

  /**
   * Creates a new map with every block missing; fails if the file exists. The
   * file gets `mode` exactly (owner-only by default: it says what the image holds).
   */
  static create(path: string, header: Omit<BlockMapHeader, 'complete'>, mode = 0o600): BlockMap {
    if (!header.session) throw new BlockMapError('a new block map needs a session id');
    const blockSizeIssue = blockSizeProblem(header.blockSize);
    if (blockSizeIssue) {
      throw new BlockMapError(`block size ${blockSizeIssue} (got ${header.blockSize})`);
    }
    for (const [key, text, max] of [
      ['source identity', header.sourceIdentity, MAX_TEXT],
      ['source URL', header.sourceUrl, MAX_TEXT],
      ['tracking epoch', header.trackingEpoch, MAX_SHORT_TEXT],
      ['session', header.session, MAX_SHORT_TEXT],
    ] as const) {
      if (Buffer.byteLength(text) > max) throw new BlockMapError(`${key} is longer than ${max} bytes`);
    }
    const full: BlockMapHeader = { ...header, complete: false };
    const blockCount = Math.ceil(header.imageSize / header.blockSize);
    const bitmapBytes = roundUp(Math.ceil(blockCount / 8), PAGE);
    const fd = fs.openSync(path, 'wx+', mode);
    try {
      fs.fchmodSync(fd, mode); // exactly, whatever the umask
      // Written, not just sized: the bitmap's blocks are allocated now, so a disk that fills
      // later cannot refuse the map's own pages (every FLUSH would then fail).
      const zeros = Buffer.alloc(Math.min(bitmapBytes, 1 << 20));
      for (let at = 0; at < bitmapBytes; at += zeros.length)
        fs.writeSync(fd, zeros, 0, Math.min(zeros.length, bitmapBytes - at), HEADER_AREA + at);
      const slot = encodeHeader(full, 1);
      fs.writeSync(fd, slot, 0, slot.length, HEADER_SLOT); // generation 1 lives in slot 1
      fs.fdatasyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(path, { force: true });
      throw e;
    }
    return new BlockMap(path, fd, full, 1, new Uint8Array(bitmapBytes));
  }

  static open(path: string): BlockMap {
    const fd = fs.openSync(path, 'r+');
    try {
      const area = Buffer.alloc(HEADER_AREA);
      fs.readSync(fd, area, 0, HEADER_AREA, 0);
      const slots = [decodeHeader(area.subarray(0, HEADER_SLOT)), decodeHeader(area.subarray(HEADER_SLOT))];
      const valid = slots.filter((s): s is { header: BlockMapHeader; generation: number } => s !== null);
      if (valid.length === 0) throw new BlockMapError(`${path} is not a ferry block map (no valid header)`);
      const best = valid.reduce((a, b) => (b.generation > a.generation ? b : a));
      const blockCount = Math.ceil(best.header.imageSize / best.header.blockSize);
      const bitmapBytes = roundUp(Math.ceil(blockCount / 8), PAGE);
      const bits = new Uint8Array(bitmapBytes);
      const n = fs.readSync(fd, bits, 0, bitmapBytes, HEADER_AREA);
      if (n < Math.ceil(blockCount / 8)) throw new BlockMapError(`${path} is truncated: bitmap has ${n} bytes`);
      // Bits past the last block must be clear; anything else is damage.
      for (let i = blockCount; i < bitmapBytes * 8; i++) bits[i >> 3] &= ~(1 << (i & 7));
      return new BlockMap(path, fd, best.header, best.generation, bits);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  isHeld(block: number): boolean {
    return (this.bits[block >> 3] & (1 << (block & 7))) !== 0;
  }

  /** The only way to change bits, for the one owner of block states; a second call throws. */
  takeBitWriter(): BitWriter {
    if (this.writerTaken) throw new BlockMapError('the block map already has an owner');
    this.writerTaken = true;
    return {
      setHeld: (block) => {
        const byte = block >> 3;
        const bit = 1 << (block & 7);
        if (this.bits[byte] & bit) return;
        this.bits[byte] |= bit;
        this.held++;
        this.dirtyPages.add(Math.floor(byte / PAGE));
      },
      clearHeld: (block) => {
        const byte = block >> 3;
        const bit = 1 << (block & 7);
        if (!(this.bits[byte] & bit)) return;
        this.bits[byte] &= ~bit;
        this.held--;
        this.dirtyPages.add(Math.floor(byte / PAGE));
      },
    };
  }

  /** Whether every block in [first, last] is held. */
  rangeHeld(first: number, last: number): boolean {
    for (let b = first; b <= last; b++) if (!this.isHeld(b)) return false;
    return true;
  }

  /** The first missing block at or after `from` (wrapping never), or -1. */
  nextMissing(from: number): number {
    let b = from;
    while (b < this.blockCount) {
      if ((b & 7) === 0 && this.bits[b >> 3] === 0xff) {
        b += 8;
        continue;
      }
      if (!this.isHeld(b)) return b;
      b++;
    }
    return -1;
  }

  /**
   * Makes every bit set so far durable: first `syncData` (the image's
   * fdatasync), then the bitmap pages, then the map's own fdatasync. Calls
   * are serialised; a call made while one runs waits for the next round.
   */
  persist(syncData: () => Promise<void>): Promise<void> {
    const round = this.persisting.then(async () => {
      const pages = [...this.dirtyPages];
      this.dirtyPages.clear();
      // Snapshot the pages now: bits set after this point wait for the next round.
      const snapshots = pages.map((page) => Buffer.from(this.bits.subarray(page * PAGE, (page + 1) * PAGE)));
      try {
        await syncData();
        for (let i = 0; i < pages.length; i++) await writeAll(this.fd, snapshots[i], HEADER_AREA + pages[i] * PAGE);
        if (pages.length) await fdatasync(this.fd);
      } catch (e) {
        for (const page of pages) this.dirtyPages.add(page);
        throw e;
      }
    });
    this.persisting = round.catch(() => undefined);
    return round;
  }

  /** Records that the copy finished (after every bit is durable). */
  async markComplete(syncData: () => Promise<void>): Promise<void> {
    if (!this.allHeld) throw new BlockMapError('cannot mark complete: blocks are still missing');
    await this.persist(syncData);
    await this.writeHeader((h) => ({ ...h, complete: true }));
  }

  /** Records that the destination is now the authority (after the cutover's write set is durable). */
  async setPhase(phase: MapPhase): Promise<void> {
    if (phase === this.header.phase) return;
    await this.writeHeader((h) => ({ ...h, phase }));
  }

  /** Records the source's tracking epoch the held blocks are now valid under. */
  async setTrackingEpoch(epoch: string): Promise<void> {
    if (epoch === this.header.trackingEpoch) return;
    if (Buffer.byteLength(epoch) > MAX_SHORT_TEXT)
      throw new BlockMapError(`tracking epoch is longer than ${MAX_SHORT_TEXT} bytes`);
    await this.writeHeader((h) => ({ ...h, trackingEpoch: epoch }));
  }

  /** Points the map at a new source URL of the same image. */
  async setSourceUrl(url: string): Promise<void> {
    if (url === this.header.sourceUrl) return;
    await this.writeHeader((h) => ({ ...h, sourceUrl: url }));
  }

  /**
   * Gives the map its name, atomically (rename, then the directory synced):
   * a map created under a temporary name becomes the migration's record only
   * once everything it describes exists.
   */
  moveTo(path: string): void {
    fs.renameSync(this.filePath, path);
    this.filePath = path;
    syncDirectory(nodePath.dirname(path));
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** Header rewrites run one at a time, so two can never pick the same slot. */
  private writeHeader(change: (current: BlockMapHeader) => BlockMapHeader): Promise<void> {
    const write = this.headerWrites.then(() => this.writeHeaderNow(change(this.header)));
    this.headerWrites = write.catch(() => undefined);
    return write;
  }

  private async writeHeaderNow(header: BlockMapHeader): Promise<void> {
    const generation = this.generation + 1;
    const slot = encodeHeader(header, generation);
    await writeAll(this.fd, slot, (generation % 2) * HEADER_SLOT);
    await fdatasync(this.fd);
    this.generation = generation;
    this.header = header;
  }
}

const FLAG_COMPLETE = 1;
const FLAG_POST_COPY = 2;
/** Byte offsets of the fixed fields of a header slot (little endian). */
const enum HeaderField {
  /** 8 bytes: MAGIC. */
  Magic = 0,
  /** u32 */
  Version = 8,
  /** u32 */
  BlockSize = 12,
  /** u64 */
  ImageSize = 16,
  /** u64: of the two slots, the one with the higher generation is current. */
  Generation = 24,
  /** u32: FLAG_ bits. */
  Flags = 32,
}
/** Header texts (length-prefixed, fixed room each) start here. */
const TEXT_OFFSET = 36;
/** The slot's last 4 bytes: CRC32 of everything before them. */
const CRC_OFFSET = HEADER_SLOT - 4;

function encodeHeader(header: BlockMapHeader, generation: number): Buffer {
  const b = Buffer.alloc(HEADER_SLOT);
  b.write(MAGIC, HeaderField.Magic, 'latin1');
  b.writeUInt32LE(VERSION, HeaderField.Version);
  b.writeUInt32LE(header.blockSize, HeaderField.BlockSize);
  b.writeBigUInt64LE(BigInt(header.imageSize), HeaderField.ImageSize);
  b.writeBigUInt64LE(BigInt(generation), HeaderField.Generation);
  b.writeUInt32LE(
    (header.complete ? FLAG_COMPLETE : 0) | (header.phase === 'post-copy' ? FLAG_POST_COPY : 0),
    HeaderField.Flags,
  );
  let at = TEXT_OFFSET;
  for (const [text, max] of [
    [header.sourceIdentity, MAX_TEXT],
    [header.sourceUrl, MAX_TEXT],
    [header.trackingEpoch, MAX_SHORT_TEXT],
    [header.session, MAX_SHORT_TEXT],
  ] as const) {
    const bytes = Buffer.from(text, 'utf8');
    b.writeUInt16LE(bytes.length, at);
    bytes.copy(b, at + 2);
    at += 2 + max;
  }
  b.writeUInt32LE(zlib.crc32(b.subarray(0, CRC_OFFSET)), CRC_OFFSET);
  return b;
}

function decodeHeader(b: Buffer): { header: BlockMapHeader; generation: number } | null {
  if (b.toString('latin1', HeaderField.Magic, HeaderField.Magic + MAGIC.length) !== MAGIC) return null;
  if (b.readUInt32LE(CRC_OFFSET) !== zlib.crc32(b.subarray(0, CRC_OFFSET))) return null;
  const version = b.readUInt32LE(HeaderField.Version);
  if (version < OLDEST_VERSION || version > VERSION)
    throw new BlockMapError(`block map version ${version} is not supported (expected ${OLDEST_VERSION}..${VERSION})`);
  const maxima = version === 1 ? [MAX_TEXT, MAX_TEXT] : [MAX_TEXT, MAX_TEXT, MAX_SHORT_TEXT, MAX_SHORT_TEXT];
  const texts: string[] = [];
  let at = TEXT_OFFSET;
  for (const max of maxima) {
    const length = b.readUInt16LE(at);
    texts.push(b.toString('utf8', at + 2, at + 2 + Math.min(length, max)));
    at += 2 + max;
  }
  const flags = b.readUInt32LE(HeaderField.Flags);
  return {
    generation: Number(b.readBigUInt64LE(HeaderField.Generation)),
    header: {
      blockSize: b.readUInt32LE(HeaderField.BlockSize),
      imageSize: Number(b.readBigUInt64LE(HeaderField.ImageSize)),
      complete: (flags & FLAG_COMPLETE) !== 0,
      phase: version === 1 || (flags & FLAG_POST_COPY) !== 0 ? 'post-copy' : 'warming',
      sourceIdentity: texts[0],
      sourceUrl: texts[1],
      trackingEpoch: texts[2] ?? '',
      session: texts[3] ?? '',
    },
  };
}

function roundUp(n: number, to: number): number {
  return Math.max(to, Math.ceil(n / to) * to);
}

function writeAll(fd: number, data: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      fs.write(fd, data, done, data.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (done + n < data.length) step(done + n);
        else resolve();
      });
    };
    step(0);
  });
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}
