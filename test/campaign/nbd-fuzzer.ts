/**
 * A hostile NBD client for the fuzz campaign: sessions of mutated handshakes
 * and requests against one export, and a model of what the export must hold
 * (its first content plus every write the server acknowledged). It speaks
 * fixed newstyle with NBD_OPT_EXPORT_NAME and simple replies, on bare
 * sockets, and shares no code with ferry.
 *
 * Valid writes of one worker stay inside the worker's own region and never
 * overlap within a burst, and a burst's replies are all read before the
 * session ends on a fault, so what the export must hold is always known:
 * a write is in the model exactly when the server acknowledged it.
 */
import net from 'node:net';
import { connectSocket as connectRaw, readExactly } from '../helpers/raw-nbd-client';

/** Every socket the fuzzer opened that is not closed yet. */
const openSockets = new Set<net.Socket>();

async function connectSocket(host: string, port: number): Promise<net.Socket> {
  const socket = await connectRaw(host, port);
  openSockets.add(socket);
  socket.once('close', () => openSockets.delete(socket));
  return socket;
}

/** Destroys the sockets still open (none should be); returns how many there were. */
export function closeLeftoverSockets(): number {
  const left = openSockets.size;
  for (const s of openSockets) s.destroy();
  openSockets.clear();
  return left;
}

const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const CMD = { read: 0, write: 1, disc: 2, flush: 3, trim: 4, cache: 5, writeZeroes: 6, blockStatus: 7 };
const FLAG = { fua: 1, noHole: 2, df: 4, reqOne: 8, fastZero: 16 };
const OPT = { exportName: 1, abort: 2, list: 3, info: 6, go: 7, structured: 8, listMeta: 9, setMeta: 10 };

export interface FuzzCounts {
  /** Request headers sent (well-formed or not). */
  requests: number;
  /** Sessions whose handshake was mutated. */
  handshakes: number;
  /** Acknowledged writes applied to the model. */
  validWrites: number;
  /** READ replies compared with the model. */
  readsChecked: number;
  /** Replies that broke the protocol or disagreed with the model. */
  wrong: string[];
  /** Bursts whose replies did not come. */
  stalls: number;
}

export function newCounts(): FuzzCounts {
  return { requests: 0, handshakes: 0, validWrites: 0, readsChecked: 0, wrong: [], stalls: 0 };
}

type Random = () => number;

interface Sent {
  type: number;
  offset: bigint;
  length: number;
  /** For a valid write: the bytes it puts at `offset` if acknowledged (zeros for WRITE_ZEROES). */
  data?: Buffer;
  /** For a READ the model can judge. */
  verify: boolean;
}

export class NbdFuzzer {
  private nextCookie = 1n;

  constructor(
    private readonly host: string,
    private readonly port: number,
    /** What the export must hold; updated as writes are acknowledged. */
    readonly model: Buffer,
    /** This worker's bytes: its valid writes land here and its reads of here are checked. */
    private readonly region: { start: number; end: number },
    private readonly random: Random,
    private readonly counts: FuzzCounts,
    private readonly maxPayload: number,
  ) {}

  /** One session: a mutated handshake, or a handshake and bursts of mutated requests ending in a fault. */
  async session(bursts: number): Promise<void> {
    const socket = await connectSocket(this.host, this.port);
    socket.on('error', () => undefined);
    try {
      if (this.random() < 0.3) await this.mutatedHandshake(socket);
      else {
        if (!(await this.handshake(socket))) return;
        for (let b = 0; b < bursts; b++) if (!(await this.burst(socket))) return;
        await this.ending(socket);
      }
    } catch (e) {
      // The server closing on us is an allowed answer to garbage; a timeout is not.
      if (/timed out/.test((e as Error).message)) this.counts.stalls++;
    } finally {
      if (this.random() < 0.5) socket.resetAndDestroy();
      else socket.destroy();
    }
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  private async handshake(socket: net.Socket, exportName = ''): Promise<boolean> {
    await readExactly(socket, 18, 5000);
    socket.write(Buffer.concat([u32(3), option(OPT.exportName, Buffer.from(exportName))]));
    const reply = await readExactly(socket, 10, 5000);
    return reply.readBigUInt64BE(0) === BigInt(this.model.length);
  }

  private async mutatedHandshake(socket: net.Socket): Promise<void> {
    this.counts.handshakes++;
    const kind = this.int(9);
    if (kind === 0) {
      // Garbage before even reading the greeting.
      socket.write(bytes(this.random, 1 + this.int(200)));
      return;
    }
    await readExactly(socket, 18, 5000);
    const flags = this.random() < 0.2 ? this.int(2 ** 32) : 3;
    socket.write(u32(flags));
    switch (kind) {
      case 1: // the option header cut short
        socket.write(option(OPT.list, Buffer.alloc(0)).subarray(0, 1 + this.int(15)));
        return;
      case 2: {
        // A flood of NBD_OPT_LIST, replies read or not.
        const n = 200 + this.int(3000);
        socket.write(Buffer.concat(Array.from({ length: n }, () => option(OPT.list, Buffer.alloc(0)))));
        if (this.random() < 0.5) await readExactly(socket, 20 * n, 5000);
        return;
      }
      case 3: {
        // A lying option length: more announced than sent, up to 2^32-1.
        const announced = this.pick([65_536, 65_537, 2 ** 31, 2 ** 32 - 1, 1 + this.int(4096)]);
        const head = option(
          this.pick([OPT.exportName, OPT.info, OPT.go, OPT.listMeta, this.int(2 ** 32)]),
          Buffer.alloc(0),
        );
        head.writeUInt32BE(announced, 12);
        socket.write(Buffer.concat([head, bytes(this.random, this.int(Math.min(announced, 8192)))]));
        return;
      }
      case 4: {
        // INFO/GO/META with inner lengths that lie, and path-like export names.
        const name = Buffer.from(this.pick(['../../etc/passwd', '/etc/shadow', 'a/../../b', '', 'x'.repeat(5000)]));
        const data = Buffer.concat([
          u32(this.pick([name.length, name.length + 7, 2 ** 32 - 1])),
          name,
          u16(this.int(65536)),
        ]);
        const opt = this.pick([OPT.info, OPT.go, OPT.listMeta, OPT.setMeta]);
        socket.write(Buffer.concat([option(OPT.structured, Buffer.alloc(0)), option(opt, data)]));
        return;
      }
      case 5: // an export name that looks like a path
        socket.write(option(OPT.exportName, Buffer.from(this.pick(['../../../etc/passwd', '/dev/sda', '.', '..']))));
        return;
      case 6: {
        // Random options with random data, then a normal start and a few requests.
        const n = 1 + this.int(20);
        for (let i = 0; i < n; i++)
          socket.write(option(this.int(this.random() < 0.5 ? 16 : 2 ** 32), bytes(this.random, this.int(64))));
        socket.write(option(OPT.abort, Buffer.alloc(0)));
        return;
      }
      case 7: // bad option magic
        socket.write(Buffer.concat([Buffer.from('IHAVEOPX'), bytes(this.random, 8 + this.int(64))]));
        return;
      default: {
        // Pure noise after the client flags.
        socket.write(bytes(this.random, 1 + this.int(1000)));
        return;
      }
    }
  }

  /** A burst of requests, replies all read and judged; false when the session cannot go on. */
  private async burst(socket: net.Socket): Promise<boolean> {
    const n = 1 + this.int(24);
    const sent = new Map<bigint, Sent>();
    const written = new Set<number>(); // 4 KiB pages of this burst's valid writes
    const parts: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const cookie = this.nextCookie++;
      const request = this.request(written);
      this.counts.requests++;
      parts.push(header(request.flags, request.type, cookie, request.offset, request.length));
      if (request.payload) parts.push(request.payload);
      sent.set(cookie, request.sent);
    }
    socket.write(Buffer.concat(parts));
    const pending = new Map(sent);
    while (pending.size > 0) {
      const reply = await readExactly(socket, 16, 10_000);
      if (reply.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
        this.counts.wrong.push(`bad reply magic 0x${reply.readUInt32BE(0).toString(16)}`);
        return false;
      }
      const error = reply.readUInt32BE(4);
      const cookie = reply.readBigUInt64BE(8);
      const request = pending.get(cookie);
      if (!request) {
        this.counts.wrong.push(`reply to unknown cookie ${cookie}`);
        return false;
      }
      pending.delete(cookie);
      if (error !== 0) continue;
      if (request.type === CMD.read) {
        const data = await readExactly(socket, request.length, 10_000);
        if (request.verify) {
          this.counts.readsChecked++;
          const at = Number(request.offset);
          if (!data.equals(this.model.subarray(at, at + request.length)))
            this.counts.wrong.push(`READ ${at}+${request.length} differs from the model`);
        }
      } else if (request.data) {
        request.data.copy(this.model, Number(request.offset));
        this.counts.validWrites++;
      } else if (request.type === CMD.write || request.type === CMD.writeZeroes || request.type === CMD.trim) {
        // Acknowledged, but the fuzzer meant it to be refused.
        if (request.length > 0)
          this.counts.wrong.push(`type ${request.type} ${request.offset}+${request.length} was accepted`);
      }
    }
    return true;
  }

  private request(written: Set<number>): {
    flags: number;
    type: number;
    offset: bigint;
    length: number;
    payload?: Buffer;
    sent: Sent;
  } {
    const size = this.model.length;
    const roll = this.random();
    if (roll < 0.3) {
      // A valid write (or write-zeroes) inside this worker's region, overlapping nothing else in the burst.
      const length = 1 + this.int(this.random() < 0.8 ? 8192 : 65_536);
      const offset = this.region.start + this.int(this.region.end - this.region.start - length);
      for (let p = Math.floor(offset / 4096); p <= Math.floor((offset + length - 1) / 4096); p++) {
        if (written.has(p)) return this.invalidRequest();
      }
      for (let p = Math.floor(offset / 4096); p <= Math.floor((offset + length - 1) / 4096); p++) written.add(p);
      const zero = this.random() < 0.2;
      const data = zero ? Buffer.alloc(length) : bytes(this.random, length);
      const flags = this.random() < 0.3 ? FLAG.fua : 0;
      const type = zero ? CMD.writeZeroes : CMD.write;
      return {
        flags,
        type,
        offset: BigInt(offset),
        length,
        payload: zero ? undefined : data,
        sent: { type, offset: BigInt(offset), length, data, verify: false },
      };
    }
    if (roll < 0.55) {
      // A valid read: checked when it touches only this worker's pages that the burst does not write.
      const length = this.random() < 0.01 ? this.maxPayload : 1 + this.int(65_536);
      const offset = this.int(size - length + 1);
      let verify = offset >= this.region.start && offset + length <= this.region.end;
      for (let p = Math.floor(offset / 4096); verify && p <= Math.floor((offset + length - 1) / 4096); p++) {
        if (written.has(p)) verify = false;
      }
      return {
        flags: this.random() < 0.2 ? FLAG.fua : 0,
        type: CMD.read,
        offset: BigInt(offset),
        length,
        sent: { type: CMD.read, offset: BigInt(offset), length, verify },
      };
    }
    if (roll < 0.6)
      return {
        flags: 0,
        type: CMD.flush,
        offset: 0n,
        length: 0,
        sent: { type: CMD.flush, offset: 0n, length: 0, verify: false },
      };
    return this.invalidRequest();
  }

  /** A request the server must refuse (or, for READ/CACHE/FLUSH, may serve without changing anything). */
  private invalidRequest(): {
    flags: number;
    type: number;
    offset: bigint;
    length: number;
    payload?: Buffer;
    sent: Sent;
  } {
    const size = BigInt(this.model.length);
    const offset = this.pick([
      2n ** 63n - 1n,
      2n ** 63n,
      2n ** 63n - 4096n,
      2n ** 64n - 1n,
      2n ** 64n - 4096n,
      size,
      size - 1n,
      BigInt(this.int(2 ** 32)) * BigInt(this.int(2 ** 32)),
    ]);
    const length = this.pick([
      0,
      1,
      4096,
      this.maxPayload,
      this.maxPayload + 1,
      2 ** 31,
      2 ** 32 - 1,
      this.int(2 ** 32),
    ]);
    const type = this.pick([
      CMD.read,
      CMD.write,
      CMD.trim,
      CMD.writeZeroes,
      CMD.cache,
      CMD.blockStatus,
      CMD.flush,
      8 + this.int(65_528),
    ]);
    // Refused for their range, or for their flags, or for their type; a WRITE carries its payload when it is small.
    let flags = this.random() < 0.5 ? this.int(65_536) : 0;
    let at = offset;
    if (this.random() < 0.3 && (type === CMD.write || type === CMD.writeZeroes || type === CMD.trim)) {
      // In range, but with a flag the command does not take.
      at = BigInt(this.region.start);
      flags = this.pick([FLAG.df, FLAG.reqOne, 0x8000, 0x40]) | (type === CMD.writeZeroes ? 0 : FLAG.noHole);
    }
    const payloadLength = type === CMD.write && length <= this.maxPayload ? Math.min(length, 1 << 20) : 0;
    const realLength = type === CMD.write ? payloadLength : length;
    const changes = type === CMD.write || type === CMD.writeZeroes || type === CMD.trim;
    // A change the server would be right to apply is made wrong by a flag no command takes.
    if (changes && at + BigInt(realLength) <= size && (flags & ~(FLAG.fua | FLAG.noHole | FLAG.fastZero)) === 0)
      flags |= 0x8000;
    return {
      flags,
      type,
      offset: at,
      length: realLength,
      payload: payloadLength > 0 ? bytes(this.random, payloadLength) : undefined,
      sent: { type, offset: at, length: realLength, verify: false },
    };
  }

  /** How the session ends: cleanly, or with a fault the server must survive without applying anything. */
  private async ending(socket: net.Socket): Promise<void> {
    const kind = this.int(7);
    const inRange = BigInt(this.region.start + this.int(this.region.end - this.region.start - 65_536));
    this.counts.requests++;
    switch (kind) {
      case 0: // DISC, then more requests, a valid write among them: none may apply
        socket.write(header(0, CMD.disc, this.nextCookie++, 0n, 0));
        this.counts.requests++;
        socket.write(Buffer.concat([header(0, CMD.write, this.nextCookie++, inRange, 4096), bytes(this.random, 4096)]));
        return;
      case 1: // a truncated header
        socket.write(header(0, CMD.read, this.nextCookie++, inRange, 4096).subarray(0, 1 + this.int(27)));
        return;
      case 2: {
        // A WRITE whose payload stops short
        const length = 1 + this.int(65_536);
        socket.write(
          Buffer.concat([
            header(0, CMD.write, this.nextCookie++, inRange, length),
            bytes(this.random, this.int(length)),
          ]),
        );
        return;
      }
      case 3: // a WRITE announcing 2^32-1 bytes, a little of them, then gone
        socket.write(
          Buffer.concat([
            header(0, CMD.write, this.nextCookie++, inRange, 2 ** 32 - 1),
            bytes(this.random, this.int(100_000)),
          ]),
        );
        return;
      case 4: // bad magic
        socket.write(Buffer.concat([bytes(this.random, 28)]));
        return;
      case 5: // reads outstanding, then a reset
        for (let i = 0; i < 8; i++) socket.write(header(0, CMD.read, this.nextCookie++, inRange, 65_536));
        return;
      default:
        socket.write(header(0, CMD.disc, this.nextCookie++, 0n, 0));
    }
  }
}

/** A well-formed client's round trip: handshake and one 4 KiB READ; the milliseconds each step took. */
export async function probe(
  host: string,
  port: number,
  at: number,
): Promise<{ connect: number; handshake: number; read: number }> {
  const t0 = performance.now();
  const socket = await connectSocket(host, port);
  try {
    const t1 = performance.now();
    await readExactly(socket, 18, 5000);
    socket.write(Buffer.concat([u32(3), option(OPT.exportName, Buffer.alloc(0))]));
    await readExactly(socket, 10, 5000);
    const t2 = performance.now();
    socket.write(header(0, CMD.read, 1n, BigInt(at), 4096));
    const reply = await readExactly(socket, 16, 5000);
    if (reply.readUInt32BE(4) !== 0) throw new Error(`probe READ failed: error ${reply.readUInt32BE(4)}`);
    await readExactly(socket, 4096, 5000);
    return { connect: t1 - t0, handshake: t2 - t1, read: performance.now() - t2 };
  } finally {
    socket.destroy();
  }
}

/** The whole export through a well-formed client, 1 MiB at a time. */
export async function readAll(host: string, port: number, size: number): Promise<Buffer> {
  const socket = await connectSocket(host, port);
  try {
    await readExactly(socket, 18, 5000);
    socket.write(Buffer.concat([u32(3), option(OPT.exportName, Buffer.alloc(0))]));
    await readExactly(socket, 10, 5000);
    const out = Buffer.alloc(size);
    for (let at = 0; at < size; at += 1 << 20) {
      const length = Math.min(1 << 20, size - at);
      socket.write(header(0, CMD.read, BigInt(at + 1), BigInt(at), length));
      const reply = await readExactly(socket, 16, 30_000);
      if (reply.readUInt32BE(4) !== 0) throw new Error(`READ ${at} failed: error ${reply.readUInt32BE(4)}`);
      (await readExactly(socket, length, 30_000)).copy(out, at);
    }
    return out;
  } finally {
    socket.destroy();
  }
}

function header(flags: number, type: number, cookie: bigint, offset: bigint, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags & 0xffff, 4);
  b.writeUInt16BE(type & 0xffff, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(offset & (2n ** 64n - 1n), 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

function option(code: number, data: Buffer): Buffer {
  const b = Buffer.alloc(16);
  b.write('IHAVEOPT', 0, 'latin1');
  b.writeUInt32BE(code >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  return Buffer.concat([b, data]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff, 0);
  return b;
}

function bytes(random: Random, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) b.writeUInt32LE((random() * 2 ** 32) >>> 0, i);
  for (; i < n; i++) b[i] = (random() * 256) | 0;
  return b;
}
