/**
 * `ferry source`'s side of the wire: authenticates destinations, answers
 * HELLO with the image's size and identity, and answers FETCHes with BATCHes
 * encoded on the worker pool — urgent fetches ahead of background ones —
 * with repeated content sent as references. Write tracking (DIRTY, the
 * fence and CUTOVER) is kept by SourceSessions; a connection passes its
 * messages on.
 */
import type net from 'node:net';
import type { Logger } from 'pino';
import type { BlockDevice } from '../store/block-device';
import { QueueFullError, type CodecPool } from '../pool';
import { createWireServer, destinationProblem, WireAuth } from './auth';
import { encodePreamble, FrameDecoder } from './frame-codec';
import {
  decodeCutoverRequest,
  decodeDirtyAck,
  decodeFetch,
  decodeHashQuery,
  decodeHello,
  decodeZeroQuery,
  encodeBlockHashes,
  encodeBatchHead,
  encodeFetchError,
  encodeRefuse,
  encodeWelcome,
  encodeZeroRanges,
  Fetch,
  HashQuery,
  Hello,
  WireEntry,
  ZeroQuery,
  ZeroRanges,
} from './messages';
import {
  FetchErrorCode,
  FetchFlag,
  MAX_ZERO_RANGES,
  MessageType,
  RefuseCode,
  Role,
  WelcomeFlag,
  WIRE_VERSION,
  WireEncoding,
} from './protocol';
import { hashBlocks } from '../util/block-hash';
import { ExtentFlags } from '../store/block-device';
import { toWireEncoding } from './encoding-map';
import { batchBlocksLimit, blockSizeProblem, MAX_BATCH_BLOCKS } from '../util/limits';
import { SourceSessions, type SessionLink, type SourceSession } from './source-sessions';
import type { CodecChooser } from './codec-chooser';
import { LinkMeter } from './link-meter';
import { BurstLog } from '../util/burst-log';

export interface SourceServerOptions {
  /** The image as read for destinations. */
  device: BlockDevice;
  /** Sessions and their write tracking. */
  sessions: SourceSessions;
  exportName: string;
  identity: string;
  auth: WireAuth;
  pool: CodecPool;
  chooser: CodecChooser;
  log: Logger;
  /** FETCHes one connection may have in progress before the server stops reading it. */
  maxFetchesInFlight?: number;
  /** Largest FETCH length accepted. */
  maxFetchBytes?: number;
  /** A peer must finish TLS and have its HELLO accepted within this time, or it is disconnected. */
  handshakeTimeoutMs?: number;
  /** Connections at once, authenticated or not; more are refused at accept. */
  maxConnections?: number;
}

const SOCKET_HIGH_WATER = 8 << 20;
/** Before HELLO a peer may send small frames only: a HELLO's metadata and no payload. */
const PRE_HELLO_MAX_META = 16 * 1024;
/** After HELLO: FETCH, ZERO_QUERY, DIRTY_ACK and CUTOVER_REQUEST are a few dozen bytes each. */
const POST_HELLO_MAX_META = 4 * 1024;
/** Span one ZERO_QUERY is answered for at most (the destination asks again from where it ends). */
const MAX_ZERO_QUERY = 2 ** 40;

export class WireSourceServer {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  /** When each connection still in its TLS handshake arrived, by peer address. */
  private readonly arrivals = new Map<string, number>();
  private readonly handshakeTimeoutMs: number;
  // A flood of refused peers is logged once per burst (the first with its address, then counts).
  private readonly authRefusals: BurstLog;
  private readonly limitRefusals: BurstLog;
  private readonly lateHandshakes: BurstLog;
  private nextId = 1;
  private readonly meter: LinkMeter;
  counters = {
    connections: 0,
    authFailures: 0,
    handshakeTimeouts: 0,
    refusedOverLimit: 0,
    batches: 0,
    bytesRead: 0,
    bytesSent: 0,
    references: 0,
  };

  constructor(private readonly options: SourceServerOptions) {
    this.authRefusals = burstLog(options.log, 'more connections failed authentication');
    this.limitRefusals = burstLog(options.log, 'more connections refused at the connection limit');
    this.lateHandshakes = burstLog(options.log, 'more peers disconnected: no HELLO in time');
    const handshakeTimeoutMs = (this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000);
    this.server = createWireServer(
      options.auth,
      { handshakeTimeoutMs },
      (socket) => this.accept(socket),
      (reason, peer, detail) => {
        this.counters.authFailures++;
        this.authRefusals.note(() =>
          options.log.warn({ peer, reason, detail }, 'refused a connection that failed authentication'),
        );
      },
    );
    this.server.maxConnections = options.maxConnections ?? 64;
    this.server.on('drop', (peer?: net.DropArgument) => {
      this.counters.refusedOverLimit++;
      this.limitRefusals.note(() =>
        options.log.warn(
          { peer: peer && `${peer.remoteAddress}:${peer.remotePort}`, limit: this.server.maxConnections },
          'refused a connection: at the connection limit (source.max_connections)',
        ),
      );
    });
    // The TLS server's own handshake timeout (the same length) guards a connection until TLS completes.
    this.server.on('connection', (raw: net.Socket) => {
      const key = `${raw.remoteAddress}:${raw.remotePort}`;
      this.arrivals.set(key, Date.now());
      raw.once('close', () => this.arrivals.delete(key));
    });
    this.meter = new LinkMeter(
      () => this.counters.bytesSent,
      () => options.pool.isFull,
      (rate) => options.chooser.recordLinkRate(rate),
    );
    this.meter.start();
  }

  listen(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve(`${a.address}:${a.port}`);
      });
    });
  }

  async close(): Promise<void> {
    this.meter.stop();
    for (const burst of [this.authRefusals, this.limitRefusals, this.lateHandshakes]) burst.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private accept(socket: net.Socket): void {
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    const log = this.options.log.child({ wire: this.nextId++, peer });
    // Unauthenticated peers cost a socket each: one that has not said HELLO in time (TLS included) is dropped.
    const arrived = this.arrivals.get(peer) ?? Date.now();
    this.arrivals.delete(peer);
    const deadline = setTimeout(
      () => {
        this.counters.handshakeTimeouts++;
        this.lateHandshakes.note(() =>
          log.warn({ timeoutMs: this.handshakeTimeoutMs }, 'disconnected a peer that did not authenticate in time'),
        );
        socket.destroy();
      },
      Math.max(0, arrived + this.handshakeTimeoutMs - Date.now()),
    );
    this.sockets.add(socket);
    this.counters.connections++;
    socket.setNoDelay(true);
    const roleProblem = destinationProblem(this.options.auth, socket);
    if (roleProblem) this.counters.authFailures++;
    const conn = new SourceConnection(socket, this.options, this.counters, log, roleProblem, () =>
      clearTimeout(deadline),
    );
    socket.on('close', () => {
      clearTimeout(deadline);
      this.sockets.delete(socket);
      conn.closed();
    });
  }
}

class SourceConnection implements SessionLink {
  private readonly decoder = new FrameDecoder();
  private hello: Hello | null = null;
  private session: SourceSession | null = null;
  private inFlight = 0;
  private dead = false;
  private readonly maxInFlight: number;
  private readonly maxFetchBytes: number;

  constructor(
    private readonly socket: net.Socket,
    private readonly options: SourceServerOptions,
    private readonly counters: WireSourceServer['counters'],
    private readonly log: Logger,
    roleProblem: string | null,
    private readonly onAuthenticated: () => void,
  ) {
    this.maxInFlight = options.maxFetchesInFlight ?? 16;
    this.maxFetchBytes = options.maxFetchBytes ?? 16 << 20;
    this.decoder.setLimits(PRE_HELLO_MAX_META, 0);
    socket.on('error', (err) => log.debug({ err: err.message }, 'wire socket error'));
    socket.write(encodePreamble());
    if (roleProblem) {
      this.refuse(RefuseCode.BadRequest, roleProblem);
      return;
    }
    socket.on('data', (chunk: Buffer) => {
      if (this.dead) return; // refused: nothing more is read or kept
      this.decoder.push(chunk);
      this.pump();
    });
    socket.on('drain', () => this.pump());
  }

  closed(): void {
    this.dead = true;
    if (this.session) this.options.sessions.disconnected(this.session, this);
  }

  sendFrames(frames: Buffer[]): void {
    this.send(frames);
  }

  private pump(): void {
    while (!this.dead && this.inFlight < this.maxInFlight) {
      const event = this.decoder.next();
      if (!event) break;
      if (event.kind === 'corrupt') return this.refuse(RefuseCode.BadRequest, `corrupt frame: ${event.reason}`);
      if (event.kind === 'preamble') {
        if (event.version !== WIRE_VERSION) {
          return this.refuse(
            RefuseCode.Version,
            `wire version ${event.version} is not supported (this source speaks ${WIRE_VERSION})`,
          );
        }
        continue;
      }
      const { frame } = event;
      if (!this.hello) {
        if (frame.type !== MessageType.Hello) return this.refuse(RefuseCode.BadRequest, 'expected HELLO first');
        this.onHello(frame.meta);
        continue;
      }
      if (frame.type === MessageType.DirtyAck) {
        const ack = decodeDirtyAck(frame.meta);
        if (typeof ack === 'string') return this.refuse(RefuseCode.BadRequest, ack);
        this.options.sessions.ack(this.session!, ack.seq);
        continue;
      }
      if (frame.type === MessageType.CutoverRequest) {
        const request = decodeCutoverRequest(frame.meta);
        if (typeof request === 'string') return this.refuse(RefuseCode.BadRequest, request);
        if (!this.session!.tracker) return this.refuse(RefuseCode.BadRequest, 'this source does not track writes');
        this.log.info('destination asked for cutover');
        this.options.sessions.requestCutover(this.session!, this).catch((e: Error) => {
          // The image stays fenced; the destination asks again on a new connection.
          this.log.error({ err: e.message }, 'cutover failed');
          this.refuse(RefuseCode.ShuttingDown, `cutover failed at the source: ${e.message}`);
        });
        continue;
      }
      if (frame.type === MessageType.ZeroQuery) {
        const query = decodeZeroQuery(frame.meta);
        if (typeof query === 'string') return this.refuse(RefuseCode.BadRequest, query);
        this.inFlight++;
        this.serveZeroQuery(query)
          .catch((e: Error) => {
            this.send([
              encodeFetchError({ requestId: query.requestId, code: FetchErrorCode.ReadError, reason: e.message }),
            ]);
          })
          .finally(() => {
            this.inFlight--;
            this.pump();
          });
        continue;
      }
      if (frame.type === MessageType.HashQuery) {
        const query = decodeHashQuery(frame.meta);
        if (typeof query === 'string') return this.refuse(RefuseCode.BadRequest, query);
        this.inFlight++;
        this.serveHashQuery(query)
          .catch((e: Error) => {
            this.send([
              encodeFetchError({ requestId: query.requestId, code: FetchErrorCode.ReadError, reason: e.message }),
            ]);
          })
          .finally(() => {
            this.inFlight--;
            this.pump();
          });
        continue;
      }
      if (frame.type !== MessageType.Fetch)
        return this.refuse(RefuseCode.BadRequest, `unexpected message type ${frame.type}`);
      const fetch = decodeFetch(frame.meta);
      if (typeof fetch === 'string') return this.refuse(RefuseCode.BadRequest, fetch);
      this.inFlight++;
      this.serveFetch(fetch)
        .catch((e: Error) => {
          // The destination must hear of it, or it waits for a final batch that never comes.
          this.log.warn({ err: e.message, requestId: fetch.requestId }, 'fetch failed');
          this.send([
            encodeFetchError({ requestId: fetch.requestId, code: FetchErrorCode.ReadError, reason: e.message }),
          ]);
        })
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
    if (this.dead) return;
    if (this.inFlight >= this.maxInFlight) this.socket.pause();
    else this.socket.resume();
  }

  private onHello(meta: Buffer): void {
    const hello = decodeHello(meta);
    if (typeof hello === 'string') return this.refuse(RefuseCode.BadRequest, hello);
    const { device, exportName, identity } = this.options;
    if (hello.version !== WIRE_VERSION)
      return this.refuse(RefuseCode.Version, `wire version ${hello.version} is not supported`);
    if (hello.exportName !== exportName && hello.exportName !== '') {
      return this.refuse(
        RefuseCode.UnknownExport,
        `unknown export "${hello.exportName}" (this source serves "${exportName}")`,
      );
    }
    if (hello.identity && hello.identity !== identity) {
      return this.refuse(RefuseCode.IdentityMismatch, `this source serves image ${identity}, not ${hello.identity}`);
    }
    const bs = hello.blockSize;
    const blockSizeIssue = blockSizeProblem(bs);
    if (blockSizeIssue) return this.refuse(RefuseCode.BadRequest, `block size ${bs} ${blockSizeIssue}`);
    if (hello.maxBatchBlocks < 1 || hello.maxBatchBlocks > MAX_BATCH_BLOCKS) {
      return this.refuse(RefuseCode.BadRequest, `maxBatchBlocks ${hello.maxBatchBlocks} is not 1..${MAX_BATCH_BLOCKS}`);
    }
    const sessions = this.options.sessions;
    let session: SourceSession | string;
    try {
      session = sessions.open(hello);
    } catch (e) {
      return this.refuse(RefuseCode.ShuttingDown, `cannot record the session: ${(e as Error).message}`);
    }
    if (typeof session === 'string') return this.refuse(RefuseCode.BadRequest, session);
    this.hello = hello;
    sessions.connected(session);
    this.session = session;
    // A destination sends small requests and never a payload: nothing bigger is buffered for it.
    this.decoder.setLimits(POST_HELLO_MAX_META, 0);
    this.onAuthenticated();
    this.socket.write(
      encodeWelcome(
        {
          version: WIRE_VERSION,
          imageSize: device.size,
          identity,
          codec: this.options.chooser.current,
          ...sessions.welcomeTracking(session),
        },
        WelcomeFlag.BlockHashes,
      ),
    );
    // After WELCOME: the first DIRTY or CUTOVER must not come before it.
    if (hello.role === Role.Urgent) sessions.attachUrgent(session, this);
    this.log.info(
      { role: hello.role === Role.Urgent ? 'urgent' : 'background', blockSize: bs, session: hello.session },
      'destination connected',
    );
  }

  private async serveFetch(fetch: Fetch): Promise<void> {
    const hello = this.hello!;
    const { device } = this.options;
    const bs = hello.blockSize;
    const problem =
      fetch.offset % bs !== 0
        ? `offset ${fetch.offset} is not a multiple of the block size ${bs}`
        : fetch.length === 0 || fetch.length > this.maxFetchBytes
          ? `length ${fetch.length} is not 1..${this.maxFetchBytes}`
          : fetch.offset + fetch.length > device.size
            ? `range ${fetch.offset}+${fetch.length} is beyond the image (${device.size} bytes)`
            : fetch.offset + fetch.length < device.size && fetch.length % bs !== 0
              ? `length ${fetch.length} is not a multiple of the block size ${bs}`
              : null;
    if (problem) {
      const code = problem.includes('beyond') ? FetchErrorCode.OutOfRange : FetchErrorCode.BadRequest;
      this.send([encodeFetchError({ requestId: fetch.requestId, code, reason: problem })]);
      return;
    }
    const urgent = fetch.priority === Role.Urgent;
    const firstBlock = fetch.offset / bs;
    const blocks = Math.ceil(fetch.length / bs);
    const perBatch = Math.min(hello.maxBatchBlocks, batchBlocksLimit(bs));
    for (let done = 0; done < blocks && !this.dead; done += perBatch) {
      const count = Math.min(perBatch, blocks - done);
      const offset = (firstBlock + done) * bs;
      const bytes = Math.min(count * bs, device.size - offset);
      // Wait while the peer is slow to read: bounded memory, and the pool is not fed for nothing.
      while (!this.dead && this.socket.writableLength > SOCKET_HIGH_WATER)
        await new Promise((r) => this.socket.once('drain', r));
      const buffer = new ArrayBuffer(count * bs); // the tail block is padded with zeros
      try {
        await device.read(offset, Buffer.from(buffer, 0, bytes));
      } catch (e) {
        this.send([
          encodeFetchError({
            requestId: fetch.requestId,
            code: FetchErrorCode.ReadError,
            reason: (e as Error).message,
          }),
        ]);
        return;
      }
      this.counters.bytesRead += bytes;
      const codec = this.options.chooser.current;
      const encoded = await this.encode(buffer, bs, urgent, codec);
      this.options.chooser.recordEncode(codec, bytes, encoded.payload.length, encoded.workerMs);
      const entries: WireEntry[] = encoded.entries.map((e) => ({
        encoding: toWireEncoding(e.encoding),
        length: e.length,
        checksum: e.checksum,
        reference: 0,
      }));
      let payload = Buffer.from(encoded.payload.buffer, encoded.payload.byteOffset, encoded.payload.byteLength);
      if (!(fetch.flags & FetchFlag.NoReferences)) payload = this.applyReferences(entries, payload, firstBlock + done);
      const final = done + count >= blocks;
      const head = encodeBatchHead(
        { requestId: fetch.requestId, offset, count, lastLength: bytes - (count - 1) * bs, entries },
        final,
        payload.length,
      );
      this.send([head, payload]);
      this.counters.batches++;
      this.counters.bytesSent += head.length + payload.length;
    }
  }

  /** Answers from the image's allocation: holes read as zeros, so the destination need not fetch them. */
  private async serveZeroQuery(query: ZeroQuery): Promise<void> {
    const { device } = this.options;
    const { requestId, offset } = query;
    if (query.length === 0 || offset + query.length > device.size) {
      const reason = `zero query ${offset}+${query.length} is not inside the image (${device.size} bytes)`;
      this.send([encodeFetchError({ requestId, code: FetchErrorCode.OutOfRange, reason })]);
      return;
    }
    const extents = await device.status(offset, Math.min(query.length, MAX_ZERO_QUERY));
    const ranges: ZeroRanges['ranges'] = [];
    let at = offset;
    for (const e of extents) {
      if (e.flags & ExtentFlags.Zero) {
        if (ranges.length === MAX_ZERO_RANGES) break;
        const last = ranges[ranges.length - 1];
        if (last && last.offset + last.length === at) last.length += e.length;
        else ranges.push({ offset: at, length: e.length });
      }
      at += e.length;
    }
    const end =
      ranges.length === MAX_ZERO_RANGES ? ranges[ranges.length - 1].offset + ranges[ranges.length - 1].length : at;
    // No extent at all (never expected) answers "data" for the whole range rather than stalling the scan.
    const covered = end > offset ? end - offset : query.length;
    this.send([encodeZeroRanges({ requestId, offset, covered, ranges })]);
  }

  /** SHA-256 of each block asked about, so the destination can take equal blocks from its seed. */
  private async serveHashQuery(query: HashQuery): Promise<void> {
    const { device } = this.options;
    const bs = this.hello!.blockSize;
    const { requestId, offset, count } = query;
    if (offset % bs !== 0 || offset >= device.size || offset + (count - 1) * bs >= device.size) {
      const reason = `hash query of ${count} blocks at ${offset} is not whole blocks inside the image (${device.size} bytes)`;
      this.send([encodeFetchError({ requestId, code: FetchErrorCode.OutOfRange, reason })]);
      return;
    }
    const data = Buffer.allocUnsafe(Math.min(count * bs, device.size - offset));
    await device.read(offset, data);
    this.send([encodeBlockHashes({ requestId, offset, count, hashes: hashBlocks(data, bs) })]);
  }

  /** Encodes on the pool, waiting (not failing) while its bounded queue is full. */
  private async encode(buffer: ArrayBuffer, bs: number, urgent: boolean, codec: string) {
    for (;;) {
      if (!urgent) await this.options.pool.whenNotFull();
      try {
        return await this.options.pool.encode(buffer, bs, { urgent, codec });
      } catch (e) {
        if (!(e instanceof QueueFullError)) throw e;
        await this.options.pool.whenAccepting(urgent);
      }
    }
  }

  /** Replaces blocks whose content this session already sent with references; returns the new payload. */
  private applyReferences(entries: WireEntry[], payload: Buffer, firstBlock: number): Buffer {
    const dedupe = this.session!.dedupe;
    const keep: Array<[number, number]> = []; // payload slices to keep
    let at = 0;
    let replaced = 0;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      const start = at;
      at += e.length;
      if (e.encoding === WireEncoding.Zero) continue;
      const seen = dedupe.lookupOrAdd(e.checksum, firstBlock + i);
      if (seen >= 0) {
        entries[i] = { encoding: WireEncoding.Reference, length: 0, checksum: e.checksum, reference: seen };
        replaced++;
        continue;
      }
      keep.push([start, e.length]);
    }
    if (replaced === 0) return payload;
    this.counters.references += replaced;
    return Buffer.concat(keep.map(([s, l]) => payload.subarray(s, s + l)));
  }

  private send(parts: Buffer[]): void {
    if (this.dead) return;
    if (parts.length > 1) this.socket.cork();
    for (const p of parts) if (p.length) this.socket.write(p);
    if (parts.length > 1) this.socket.uncork();
  }

  private refuse(code: RefuseCode, reason: string): void {
    this.log.warn({ code, reason }, 'refusing destination');
    this.send([encodeRefuse({ code, reason })]);
    this.dead = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }
}

/** Counts the repeats of a refusal and logs them as one line per window. */
function burstLog(log: Logger, msg: string): BurstLog {
  return new BurstLog((count, windowMs) => log.warn({ count, windowMs }, msg));
}
