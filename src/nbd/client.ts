/**
 * An NBD client: fixed newstyle handshake with NBD_OPT_GO (NBD_OPT_EXPORT_NAME
 * when the server has no GO, or speaks plain newstyle; oldstyle servers need
 * no options), then pipelined requests matched to replies by cookie. Used as
 * the plain-NBD upstream of a migrating destination and by ferry's own tools
 * and tests.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import type { Extent } from '../store/block-device';
import {
  ClientDecoder,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequestHeader,
  ServerMessage,
} from './client-codec';
import {
  BASE_ALLOCATION,
  ClientFlag,
  COMMAND_NAMES,
  Command,
  CommandFlag,
  HandshakeFlag,
  InfoType,
  NbdErrno,
  Option,
  OptionReply,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
} from './protocol';
import type { ListenAddress } from './server';

export class NbdError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'NbdError';
  }
  get errnoName(): string {
    return Object.entries(NbdErrno).find(([, v]) => v === this.errno)?.[0] ?? `errno ${this.errno}`;
  }
}

export interface NbdClientOptions {
  exportName?: string;
  /** Negotiate structured replies and meta contexts (default true). */
  structured?: boolean;
  /** Meta contexts to ask for with structured replies (default: base:allocation). */
  metaContexts?: string[];
  connectTimeoutMs?: number;
  /** Gives up the connection attempt when it fires. */
  signal?: AbortSignal;
}

/** How the handshake went: which negotiation the server speaks. */
export type NbdNegotiationStyle = 'oldstyle' | 'newstyle' | 'fixed-newstyle';

interface Pending {
  type: Command;
  offset: number;
  length: number;
  /** BLOCK_STATUS: the meta context whose extents are wanted (the server sends one chunk per context). */
  contextId: number;
  resolve: (value: Buffer | Extent[] | null) => void;
  reject: (err: Error) => void;
  data: Buffer | null;
  extents: Extent[] | null;
  error: NbdError | null;
}

export class NbdClient extends EventEmitter {
  size = 0;
  transmissionFlags = 0;
  blockSize = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  structuredReplies = false;
  negotiation: NbdNegotiationStyle = 'fixed-newstyle';
  /** Meta contexts the server agreed to, by name; an id may be 0. */
  readonly metaContexts = new Map<string, number>();
  private readonly decoder: ClientDecoder;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closed = false;
  private closeError: Error = new Error('NBD connection closed');
  private optionWaiter: ((m: ServerMessage) => void) | null = null;
  private lastData = Date.now();
  private readonly watchdog: NodeJS.Timeout;
  /** How long requests may wait with no byte from the server before the connection is dropped. */
  static stallTimeoutMs = 30_000;
  private handshaking = true;

  private constructor(private readonly socket: net.Socket) {
    super();
    this.decoder = new ClientDecoder((cookie) => {
      const p = this.pending.get(cookie);
      return p && p.type === Command.Read ? p.length : 0;
    });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    socket.on('data', (chunk: Buffer) => {
      this.lastData = Date.now();
      this.decoder.push(chunk);
      this.drain();
    });
    // A path that dies without a reset leaves requests waiting forever: give up on a silent server.
    this.watchdog = setInterval(() => {
      if (this.pending.size > 0 && Date.now() - this.lastData > NbdClient.stallTimeoutMs) {
        this.closeError = new Error(
          `NBD server sent nothing for ${NbdClient.stallTimeoutMs} ms with requests outstanding`,
        );
        socket.destroy();
      }
    }, 1000);
    this.watchdog.unref();
    socket.on('error', (err) => {
      this.closeError = new Error(`NBD connection failed: ${err.message}`);
    });
    socket.on('close', () => this.onClose());
  }

  static async connect(address: ListenAddress, options: NbdClientOptions = {}): Promise<NbdClient> {
    const { signal } = options;
    const aborted = (): Error => new Error('NBD connection attempt abandoned');
    if (signal?.aborted) throw aborted();
    const socket = await openSocket(address, options.connectTimeoutMs ?? 10_000);
    const client = new NbdClient(socket);
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const structured = options.structured ?? true;
    try {
      await Promise.race([
        client.handshake(options.exportName ?? '', structured ? (options.metaContexts ?? [BASE_ALLOCATION]) : null),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`NBD handshake did not finish within ${timeoutMs} ms`)), timeoutMs);
          onAbort = () => reject(aborted());
          if (signal?.aborted) onAbort();
          else signal?.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
    return client;
  }

  /** The id the server gave a meta context, or undefined when it was not negotiated. */
  metaContextId(name: string): number | undefined {
    return this.metaContexts.get(name);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(Command.Read, 0, offset, length, null) as Promise<Buffer>;
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.request(Command.Write, fua ? CommandFlag.Fua : 0, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(Command.Flush, 0, 0, 0, null);
  }

  async trim(offset: number, length: number, fua = false): Promise<void> {
    await this.request(Command.Trim, fua ? CommandFlag.Fua : 0, offset, length, null);
  }

  async zero(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Command.WriteZeroes, flags, offset, length, null);
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.request(Command.Cache, 0, offset, length, null);
  }

  /** The extents of one negotiated meta context over [offset, offset+length) (they may cover less). */
  blockStatus(offset: number, length: number, context = BASE_ALLOCATION, flags = 0): Promise<Extent[]> {
    const id = this.metaContexts.get(context);
    if (id === undefined) return Promise.reject(new Error(`meta context ${context} was not negotiated`));
    return this.request(Command.BlockStatus, flags, offset, length, null, id) as Promise<Extent[]>;
  }

  /** Sends NBD_CMD_DISC after in-flight requests and closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.pending.size > 0) await new Promise((resolve) => this.once('idle', resolve));
    if (!this.closed) {
      this.socket.write(encodeRequestHeader(0, Command.Disc, 0n, 0, 0));
      this.socket.end();
      await new Promise<void>((resolve) => (this.closed ? resolve() : this.socket.once('close', () => resolve())));
    }
  }

  /** Drops the connection at once; in-flight requests fail. */
  destroy(): void {
    this.socket.destroy();
  }

  private request(
    type: Command,
    flags: number,
    offset: number,
    length: number,
    payload: Buffer | null,
    contextId = 0,
  ): Promise<Buffer | Extent[] | null> {
    if (this.closed) return Promise.reject(this.closeError);
    const cookie = this.nextCookie++;
    if (this.pending.size === 0) this.lastData = Date.now();
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, {
        type,
        offset,
        length,
        contextId,
        resolve,
        reject,
        data: null,
        extents: null,
        error: null,
      });
      const header = encodeRequestHeader(flags, type, cookie, offset, length);
      if (payload) {
        this.socket.cork();
        this.socket.write(header);
        this.socket.write(payload);
        this.socket.uncork();
      } else this.socket.write(header);
    });
  }

  /** metaContexts null: simple replies only. */
  private async handshake(exportName: string, metaContexts: string[] | null): Promise<void> {
    const greeting = await this.nextMessage();
    if (greeting.kind === 'oldstyle') {
      // One export and no options: the export name has no meaning here.
      this.negotiation = 'oldstyle';
      this.enterTransmission(greeting.size, greeting.transmissionFlags);
      return;
    }
    if (greeting.kind !== 'greeting') throw new Error('NBD handshake: expected the server greeting');
    const fixed = (greeting.handshakeFlags & HandshakeFlag.FixedNewstyle) !== 0;
    const noZeroes = (greeting.handshakeFlags & HandshakeFlag.NoZeroes) !== 0;
    const flags = Buffer.allocUnsafe(4);
    flags.writeUInt32BE((fixed ? ClientFlag.FixedNewstyle : 0) | (noZeroes ? ClientFlag.NoZeroes : 0), 0);
    this.socket.write(flags);
    if (!fixed) {
      // Plain newstyle: NBD_OPT_EXPORT_NAME is the only option there is.
      this.negotiation = 'newstyle';
      await this.exportName(exportName, noZeroes);
      return;
    }
    if (metaContexts) {
      const reply = await this.option(Option.StructuredReply);
      this.structuredReplies = reply[reply.length - 1].type === OptionReply.Ack;
      if (this.structuredReplies && metaContexts.length > 0) {
        const replies = await this.option(Option.SetMetaContext, encodeMetaContextData(exportName, metaContexts));
        for (const r of replies) {
          if (r.type !== OptionReply.MetaContext || r.data.length < 4) continue;
          const name = r.data.toString('utf8', 4);
          if (metaContexts.includes(name)) this.metaContexts.set(name, r.data.readUInt32BE(0));
        }
      }
    }
    const replies = await this.option(Option.Go, encodeGoData(exportName, [InfoType.BlockSize]));
    const last = replies[replies.length - 1];
    if (last.type === OptionReply.ErrUnsup) {
      // A fixed-newstyle server older than NBD_OPT_GO: the spec's fallback.
      await this.exportName(exportName, noZeroes);
      return;
    }
    if (last.type !== OptionReply.Ack) {
      const text = last.data.toString('utf8');
      throw new Error(
        `NBD server refused export "${exportName}": ${optionReplyName(last.type)}${text ? ` (${text})` : ''}`,
      );
    }
    let size = 0;
    let transmissionFlags = 0;
    for (const r of replies) {
      if (r.type !== OptionReply.Info || r.data.length < 2) continue;
      const info = r.data.readUInt16BE(0);
      if (info === InfoType.Export && r.data.length >= 12) {
        size = r.data.readUInt32BE(2) * 0x100000000 + r.data.readUInt32BE(6);
        transmissionFlags = r.data.readUInt16BE(10);
      } else if (info === InfoType.BlockSize && r.data.length >= 14) {
        this.blockSize = {
          minimum: r.data.readUInt32BE(2),
          preferred: r.data.readUInt32BE(6),
          maximum: r.data.readUInt32BE(10),
        };
      }
    }
    this.enterTransmission(size, transmissionFlags);
  }

  /** NBD_OPT_EXPORT_NAME: the server answers with the export, or hangs up when it has no such export. */
  private async exportName(exportName: string, noZeroes: boolean): Promise<void> {
    this.decoder.expectExportNameReply(noZeroes);
    this.socket.write(encodeOption(Option.ExportName, Buffer.from(exportName, 'utf8')));
    let reply;
    try {
      reply = await this.nextMessage();
    } catch (e) {
      throw new Error(
        `NBD server refused export "${exportName}" (it closed the connection after NBD_OPT_EXPORT_NAME)`,
        {
          cause: e,
        },
      );
    }
    if (reply.kind !== 'export') throw new Error('NBD handshake: expected the export after NBD_OPT_EXPORT_NAME');
    this.enterTransmission(reply.size, reply.transmissionFlags);
  }

  private enterTransmission(size: number, transmissionFlags: number): void {
    this.size = size;
    this.transmissionFlags = transmissionFlags;
    this.handshaking = false;
    this.decoder.startTransmission();
    this.drain();
  }

  get readOnly(): boolean {
    return (this.transmissionFlags & TransmissionFlag.ReadOnly) !== 0;
  }

  /** Sends an option and collects replies up to and including the final one. */
  private async option(option: number, data?: Buffer): Promise<Array<{ type: number; data: Buffer }>> {
    this.socket.write(encodeOption(option, data));
    const replies: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const m = await this.nextMessage();
      if (m.kind !== 'optionReply') throw new Error('NBD handshake: expected an option reply');
      replies.push({ type: m.type, data: Buffer.from(m.data) });
      const final = m.type === OptionReply.Ack || (m.type & 0x80000000) !== 0;
      if (final) return replies;
    }
  }

  private nextMessage(): Promise<ServerMessage> {
    const m = this.decoder.next();
    if (m)
      return m.kind === 'protocolError' ? Promise.reject(new Error(`NBD handshake: ${m.reason}`)) : Promise.resolve(m);
    if (this.closed) return Promise.reject(new Error('NBD server closed the connection during the handshake'));
    return new Promise((resolve, reject) => {
      this.optionWaiter = (message) =>
        message.kind === 'protocolError' ? reject(new Error(`NBD handshake: ${message.reason}`)) : resolve(message);
      this.once('handshake-closed', () => reject(new Error('NBD server closed the connection during the handshake')));
    });
  }

  private drain(): void {
    for (;;) {
      if (this.handshaking) {
        // Handshake messages stay queued until the handshake asks for them.
        if (!this.optionWaiter) return;
        const m = this.decoder.next();
        if (!m) return;
        const waiter = this.optionWaiter;
        this.optionWaiter = null;
        waiter(m);
        continue;
      }
      const m = this.decoder.next();
      if (!m) return;
      if (m.kind === 'protocolError') {
        this.closeError = new Error(`NBD protocol error from server: ${m.reason}`);
        this.socket.destroy();
        return;
      }
      if (m.kind === 'simpleReply') this.onSimple(m.cookie, m.error, m.data);
      else if (m.kind === 'chunk') this.onChunk(m.cookie, m.flags, m.type, m.payload);
      else return; // option replies outside the handshake: ignore
    }
  }

  private onSimple(cookie: bigint, error: number, data: Buffer | null): void {
    const p = this.pending.get(cookie);
    if (!p) return;
    this.pending.delete(cookie);
    if (this.pending.size === 0) this.emit('idle');
    if (error)
      p.reject(
        new NbdError(
          error,
          `NBD ${COMMAND_NAMES[p.type] ?? p.type} at ${p.offset}+${p.length} failed with error ${error}`,
        ),
      );
    else p.resolve(p.type === Command.Read ? (data ?? Buffer.alloc(0)) : null);
  }

  private onChunk(cookie: bigint, flags: number, type: number, payload: Buffer): void {
    const p = this.pending.get(cookie);
    if (!p) return;
    if (type === ReplyType.OffsetData) {
      const offset = payload.length >= 8 ? payload.readUInt32BE(0) * 0x100000000 + payload.readUInt32BE(4) : -1;
      if (offset < p.offset || offset + payload.length - 8 > p.offset + p.length) {
        this.closeError = new Error(`NBD protocol error from server: data chunk outside the request`);
        this.socket.destroy();
        return;
      }
      p.data ??= Buffer.alloc(p.length);
      payload.copy(p.data, offset - p.offset, 8);
    } else if (type === ReplyType.OffsetHole) {
      p.data ??= Buffer.alloc(p.length); // zero-filled already
    } else if (type === ReplyType.BlockStatus) {
      p.extents ??= [];
      if (payload.length < 4 || payload.readUInt32BE(0) !== p.contextId) return this.endChunk(cookie, p, flags);
      for (let at = 4; at + 8 <= payload.length; at += 8)
        p.extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
    } else if (type === ReplyType.Error || type === ReplyType.ErrorOffset) {
      const errno = payload.readUInt32BE(0);
      const msgLength = payload.readUInt16BE(4);
      const text = payload.toString('utf8', 6, 6 + msgLength);
      p.error = new NbdError(
        errno,
        `NBD ${COMMAND_NAMES[p.type] ?? p.type} at ${p.offset}+${p.length} failed with error ${errno}: ${text}`,
      );
    }
    this.endChunk(cookie, p, flags);
  }

  private endChunk(cookie: bigint, p: Pending, flags: number): void {
    if (!(flags & ReplyFlag.Done)) return;
    this.pending.delete(cookie);
    if (this.pending.size === 0) this.emit('idle');
    if (p.error) p.reject(p.error);
    else if (p.type === Command.Read) p.resolve(p.data ?? Buffer.alloc(p.length));
    else if (p.type === Command.BlockStatus) p.resolve(p.extents ?? []);
    else p.resolve(null);
  }

  private onClose(): void {
    this.closed = true;
    clearInterval(this.watchdog);
    this.emit('handshake-closed');
    for (const p of this.pending.values()) p.reject(this.closeError);
    this.pending.clear();
    this.emit('idle');
    this.emit('close', this.closeError);
  }
}

function openSocket(address: ListenAddress, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = 'socketPath' in address ? net.connect(address.socketPath) : net.connect(address.port, address.host);
    const where = 'socketPath' in address ? address.socketPath : `${address.host}:${address.port}`;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`cannot connect to NBD server at ${where}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot connect to NBD server at ${where}: ${err.message}`));
    });
  });
}

function optionReplyName(type: number): string {
  switch (type) {
    case OptionReply.ErrUnknown:
      return 'unknown export';
    case OptionReply.ErrUnsup:
      return 'unsupported';
    case OptionReply.ErrPolicy:
      return 'refused by policy';
    case OptionReply.ErrInvalid:
      return 'invalid request';
    case OptionReply.ErrTlsReqd:
      return 'TLS required';
    case OptionReply.ErrShutdown:
      return 'server shutting down';
    default:
      return `error 0x${type.toString(16)}`;
  }
}
