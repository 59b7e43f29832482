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
  isFinalOptionReply,
  optionReplyName,
  readExportInfo,
  readMetaContexts,
  type OptionReplyData,
} from './client-handshake';
import { ClientRequests, type ReplyValue } from './client-requests';
import { largeBuffers } from './buffer-pool';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Command,
  CommandFlag,
  HandshakeFlag,
  InfoType,
  Option,
  OptionReply,
  TransmissionFlag,
} from './protocol';
import type { ListenAddress } from './server';

export { NbdError } from './client-requests';

export interface NbdClientOptions {
  exportName?: string;
  /** Negotiate structured replies and meta contexts (default true). */
  structured?: boolean;
  /** Meta contexts to ask for with structured replies (default: base:allocation). */
  metaContexts?: string[];
  connectTimeoutMs?: number;
  /** How long requests may wait with no byte from the server before the connection is dropped (default 30 s). */
  stallTimeoutMs?: number;
  /** Gives up the connection attempt when it fires. */
  signal?: AbortSignal;
}

/** How the handshake went: which negotiation the server speaks. */
export type NbdNegotiationStyle = 'oldstyle' | 'newstyle' | 'fixed-newstyle';

export class NbdClient extends EventEmitter {
  size = 0;
  transmissionFlags = 0;
  blockSize = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  structuredReplies = false;
  negotiation: NbdNegotiationStyle = 'fixed-newstyle';
  /** Meta contexts the server agreed to, by name; an id may be 0. */
  readonly metaContexts = new Map<string, number>();
  private readonly decoder: ClientDecoder;
  /** READ data comes in buffers of the process's pool: an owner done with one may give it back there. */
  private readonly requests = new ClientRequests(
    () => this.emit('idle'),
    (length) => largeBuffers.take(length),
  );
  private closed = false;
  private closeError: Error = new Error('NBD connection closed');
  private optionWaiter: ((m: ServerMessage) => void) | null = null;
  private lastData = Date.now();
  private readonly watchdog: NodeJS.Timeout;
  private handshaking = true;

  private constructor(
    private readonly socket: net.Socket,
    stallTimeoutMs: number,
  ) {
    super();
    this.decoder = new ClientDecoder(
      (cookie) => this.requests.readLength(cookie),
      (length) => largeBuffers.take(length),
    );
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    socket.on('data', (chunk: Buffer) => {
      this.lastData = Date.now();
      this.decoder.push(chunk);
      this.drain();
    });
    // A path that dies without a reset leaves requests waiting forever: give up on a silent server.
    this.watchdog = setInterval(
      () => {
        if (this.requests.size > 0 && Date.now() - this.lastData > stallTimeoutMs) {
          this.closeError = new Error(`NBD server sent nothing for ${stallTimeoutMs} ms with requests outstanding`);
          socket.destroy();
        }
      },
      Math.min(1000, stallTimeoutMs),
    );
    this.watchdog.unref();
    socket.on('error', (err) => {
      this.closeError = new Error(`NBD connection failed: ${err.message}`);
    });
    socket.on('close', () => this.onClose());
  }

  /** Bytes read from the server so far, framing included (what crossed the link). */
  get bytesReceived(): number {
    return this.socket.bytesRead;
  }

  static async connect(address: ListenAddress, options: NbdClientOptions = {}): Promise<NbdClient> {
    const { signal } = options;
    const aborted = (): Error => new Error('NBD connection attempt abandoned');
    if (signal?.aborted) throw aborted();
    const socket = await openSocket(address, options.connectTimeoutMs ?? 10_000);
    const client = new NbdClient(socket, options.stallTimeoutMs ?? 30_000);
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
    return this.requests.size;
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
    if (this.requests.size > 0) await new Promise((resolve) => this.once('idle', resolve));
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
  ): Promise<ReplyValue> {
    if (this.closed) return Promise.reject(this.closeError);
    if (this.requests.size === 0) this.lastData = Date.now();
    const { cookie, reply } = this.requests.add(type, offset, length, contextId);
    const header = encodeRequestHeader(flags, type, cookie, offset, length);
    if (payload) {
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(payload);
      this.socket.uncork();
    } else this.socket.write(header);
    return reply;
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
        for (const [name, id] of readMetaContexts(replies, metaContexts)) this.metaContexts.set(name, id);
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
    const info = readExportInfo(replies);
    if (info.blockSize) this.blockSize = info.blockSize;
    this.enterTransmission(info.size, info.transmissionFlags);
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
  private async option(option: number, data?: Buffer): Promise<OptionReplyData[]> {
    this.socket.write(encodeOption(option, data));
    const replies: OptionReplyData[] = [];
    for (;;) {
      const m = await this.nextMessage();
      if (m.kind !== 'optionReply') throw new Error('NBD handshake: expected an option reply');
      replies.push({ type: m.type, data: Buffer.from(m.data) });
      if (isFinalOptionReply(m.type)) return replies;
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
      if (m.kind === 'simpleReply') this.requests.onSimple(m.cookie, m.error, m.data);
      else if (m.kind === 'chunk') {
        const error = this.requests.onChunk(m.cookie, m.flags, m.type, m.payload);
        largeBuffers.give(m.payload); // copied out: a chunk's payload is never kept
        if (error) {
          this.closeError = new Error(`NBD protocol error from server: ${error}`);
          this.socket.destroy();
          return;
        }
      } else return; // option replies outside the handshake: ignore
    }
  }

  private onClose(): void {
    this.closed = true;
    clearInterval(this.watchdog);
    this.emit('handshake-closed');
    this.requests.failAll(this.closeError);
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
