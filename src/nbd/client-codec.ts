/**
 * The client side of the NBD protocol, pure: requests and options to bytes,
 * server bytes to typed messages. The decoder is told how many data bytes a
 * simple READ reply carries, since the wire does not say. It reads the three
 * greetings a server may send: oldstyle (the export follows at once), and
 * newstyle with or without the fixed-newstyle flag.
 */
import { ByteQueue } from '../util/byte-queue';
import {
  CLISERV_MAGIC,
  Command,
  EXPORT_NAME_REPLY_SIZE,
  IHAVEOPT,
  OLDSTYLE_GREETING_SIZE,
  NBDMAGIC,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './protocol';

export type ServerMessage =
  | { kind: 'greeting'; handshakeFlags: number }
  /** Oldstyle: the server's one export, then transmission. */
  | { kind: 'oldstyle'; size: number; transmissionFlags: number }
  /** The answer to NBD_OPT_EXPORT_NAME. */
  | { kind: 'export'; size: number; transmissionFlags: number }
  | { kind: 'optionReply'; option: number; type: number; data: Buffer }
  | { kind: 'simpleReply'; cookie: bigint; error: number; data: Buffer | null }
  | { kind: 'chunk'; cookie: bigint; flags: number; type: number; payload: Buffer }
  | { kind: 'protocolError'; reason: string };

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

export function encodeRequestHeader(
  flags: number,
  type: Command,
  cookie: bigint,
  offset: number,
  length: number,
): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(Math.floor(offset / 0x100000000), 16);
  b.writeUInt32BE(offset >>> 0, 20);
  b.writeUInt32BE(length, 24);
  return b;
}

/** NBD_OPT_GO / NBD_OPT_INFO data. */
export function encodeGoData(name: string, infos: number[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + nameBytes.length + 2 + infos.length * 2);
  b.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 4 + nameBytes.length + 2 + i * 2));
  return b;
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data. */
export function encodeMetaContextData(exportName: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const name = Buffer.from(exportName, 'utf8');
  const header = Buffer.allocUnsafe(4);
  header.writeUInt32BE(name.length, 0);
  parts.push(header, name);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const q = Buffer.from(query, 'utf8');
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(q.length, 0);
    parts.push(len, q);
  }
  return Buffer.concat(parts);
}

type Phase = 'greeting' | 'options' | 'exportName' | 'transmission' | 'failed';

export class ClientDecoder {
  private readonly queue = new ByteQueue();
  private phase: Phase = 'greeting';

  /**
   * readLength(cookie) gives the data length a successful simple reply carries (0 if none);
   * takeBuffer(length) the buffer reply data and chunk payloads are read into.
   */
  constructor(
    private readonly readLength: (cookie: bigint) => number,
    private readonly takeBuffer: (length: number) => Buffer = (length) => Buffer.allocUnsafe(length),
  ) {}

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  startTransmission(): void {
    this.phase = 'transmission';
  }

  /** The client sent NBD_OPT_EXPORT_NAME: the next bytes are the export's size and flags. */
  expectExportNameReply(noZeroes: boolean): void {
    this.phase = 'exportName';
    this.exportReplyZeroes = !noZeroes;
  }

  private exportReplyZeroes = true;

  next(): ServerMessage | null {
    switch (this.phase) {
      case 'greeting':
        return this.greeting();
      case 'options':
        return this.optionReply();
      case 'exportName':
        return this.exportNameReply();
      case 'transmission':
        return this.reply();
      case 'failed':
        return null;
    }
  }

  private greeting(): ServerMessage | null {
    if (this.queue.length < 16) return null;
    const magics = this.peekHeader(16);
    if (magics.readBigUInt64BE(0) !== NBDMAGIC) return this.fail('not an NBD server (bad NBDMAGIC)');
    const style = magics.readBigUInt64BE(8);
    if (style === IHAVEOPT) {
      if (this.queue.length < 18) return null;
      const b = this.queue.take(18);
      this.phase = 'options';
      return { kind: 'greeting', handshakeFlags: b.readUInt16BE(16) };
    }
    if (style === CLISERV_MAGIC) {
      if (this.queue.length < OLDSTYLE_GREETING_SIZE) return null;
      const b = this.queue.take(OLDSTYLE_GREETING_SIZE);
      // 32 bits of flags: the upper 16 are handshake flags (none in oldstyle), the lower 16 transmission flags.
      return { kind: 'oldstyle', size: readSize(b, 16), transmissionFlags: b.readUInt32BE(24) & 0xffff };
    }
    return this.fail(`not an NBD server (unknown negotiation magic 0x${style.toString(16)})`);
  }

  private exportNameReply(): ServerMessage | null {
    const length = EXPORT_NAME_REPLY_SIZE + (this.exportReplyZeroes ? 124 : 0);
    if (this.queue.length < length) return null;
    const b = this.queue.take(length);
    return { kind: 'export', size: readSize(b, 0), transmissionFlags: b.readUInt16BE(8) };
  }

  private optionReply(): ServerMessage | null {
    if (this.queue.length < OPTION_REPLY_HEADER_SIZE) return null;
    const b = this.peekHeader(OPTION_REPLY_HEADER_SIZE);
    if (b.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) return this.fail('bad option reply magic');
    const length = b.readUInt32BE(16);
    if (length > 1 << 24) return this.fail(`option reply of ${length} bytes is too long`);
    if (this.queue.length < OPTION_REPLY_HEADER_SIZE + length) return null;
    this.queue.skip(OPTION_REPLY_HEADER_SIZE);
    return { kind: 'optionReply', option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: this.queue.take(length) };
  }

  private reply(): ServerMessage | null {
    if (this.queue.length < 4) return null;
    const magic = this.peekHeader(4).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      if (this.queue.length < SIMPLE_REPLY_HEADER_SIZE) return null;
      const b = this.peekHeader(SIMPLE_REPLY_HEADER_SIZE);
      const error = b.readUInt32BE(4);
      const cookie = b.readBigUInt64BE(8);
      const dataLength = error === 0 ? this.readLength(cookie) : 0;
      if (this.queue.length < SIMPLE_REPLY_HEADER_SIZE + dataLength) return null;
      this.queue.skip(SIMPLE_REPLY_HEADER_SIZE);
      let data: Buffer | null = null;
      if (dataLength > 0) {
        data = this.takeBuffer(dataLength);
        this.queue.copyInto(data, 0, dataLength);
      }
      return { kind: 'simpleReply', cookie, error, data };
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      if (this.queue.length < STRUCTURED_REPLY_HEADER_SIZE) return null;
      const b = this.peekHeader(STRUCTURED_REPLY_HEADER_SIZE);
      const length = b.readUInt32BE(16);
      if (length > (1 << 26) + 64) return this.fail(`structured reply chunk of ${length} bytes is too long`);
      if (this.queue.length < STRUCTURED_REPLY_HEADER_SIZE + length) return null;
      this.queue.skip(STRUCTURED_REPLY_HEADER_SIZE);
      const payload = this.takeBuffer(length);
      this.queue.copyInto(payload, 0, length);
      return {
        kind: 'chunk',
        flags: b.readUInt16BE(4),
        type: b.readUInt16BE(6),
        cookie: b.readBigUInt64BE(8),
        payload,
      };
    }
    return this.fail(`bad reply magic 0x${magic.toString(16)}`);
  }

  private peekHeader(n: number): Buffer {
    return this.queue.peek(n);
  }

  private fail(reason: string): ServerMessage {
    this.phase = 'failed';
    return { kind: 'protocolError', reason };
  }
}

/** An export size (u64) as a number; sizes beyond 2^53 bytes are not images anyone migrates. */
function readSize(b: Buffer, at: number): number {
  return Number(b.readBigUInt64BE(at));
}
