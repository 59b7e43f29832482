/**
 * One destination's connection to a ferry-wire source: reads its frames,
 * finds the image its HELLO names and checks the HELLO against it, hands FETCHes to source-fetch.ts and ZERO_QUERYs to
 * source-zero-query.ts (at most maxFetchesInFlight at once, then it stops
 * reading), and passes DIRTY acknowledgements and CUTOVER requests to
 * that image's SourceSessions.
 */
import type net from 'node:net';
import type { Logger } from 'pino';
import type { BatchCodec } from '../codec/batch-codec';
import type { BatchBuffers } from './batch-buffers';
import { encodePreamble, FrameDecoder } from './frame-codec';
import {
  decodeCutoverRequest,
  decodeDirtyAck,
  decodeFetch,
  decodeHello,
  decodeHashQuery,
  decodePace,
  decodeZeroQuery,
  encodeFetchError,
  encodeRefuse,
  encodeWelcome,
  Hello,
} from './messages';
import { FetchErrorCode, MessageType, RefuseCode, Role, WelcomeFlag, WIRE_VERSION } from './protocol';
import { serveFetch, type FetchLink } from './source-fetch';
import { helloRefusal } from './source-hello';
import type { SourceCounters, SourceServerOptions } from './source-server';
import type { SessionLink, SourceSession } from './source-sessions';
import type { SourceImage } from './source-image';
import { answerHashQuery } from './source-hash-query';
import { answerZeroQuery } from './source-zero-query';

const SOCKET_HIGH_WATER = 8 << 20;
/** Before HELLO a peer may send small frames only: a HELLO's metadata and no payload. */
const PRE_HELLO_MAX_META = 16 * 1024;
/** After HELLO: FETCH, ZERO_QUERY, DIRTY_ACK and CUTOVER_REQUEST are a few dozen bytes each. */
const POST_HELLO_MAX_META = 4 * 1024;

export class SourceConnection implements SessionLink, FetchLink {
  private readonly decoder = new FrameDecoder();
  private hello: Hello | null = null;
  /** The image the HELLO named; set with the session. */
  private image: SourceImage | null = null;
  private session: SourceSession | null = null;
  private inFlight = 0;
  dead = false;
  private readonly maxInFlight: number;
  private readonly maxFetchBytes: number;

  constructor(
    private readonly socket: net.Socket,
    private readonly options: SourceServerOptions,
    private readonly counters: SourceCounters,
    private readonly hasher: BatchCodec,
    private readonly buffers: BatchBuffers,
    private readonly log: Logger,
    roleProblem: string | null,
    private readonly onAuthenticated: () => void,
  ) {
    this.maxInFlight = options.maxFetchesInFlight ?? 16;
    this.maxFetchBytes = options.maxFetchBytes ?? 16 << 20;
    this.decoder.setLimits(PRE_HELLO_MAX_META, 0);
    socket.on('error', (err) => {
      log.debug({ err: err.message }, 'wire socket error');
      // A TLS record that fails its check errors without closing the socket: nothing more can be read.
      socket.destroy();
    });
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
    if (this.session) {
      this.image!.sessions.disconnected(this.session, this);
      this.image!.wireConnections--;
    }
  }

  sendFrames(frames: Buffer[]): void {
    this.send(frames);
  }

  paceDelay(bytes: number): number {
    return this.session ? this.session.pacer.reserve(bytes) : 0;
  }

  async roomToWrite(): Promise<void> {
    while (!this.dead && this.socket.writableLength > SOCKET_HIGH_WATER)
      await new Promise((r) => this.socket.once('drain', r));
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
        this.image!.sessions.ack(this.session!, ack.seq);
        continue;
      }
      if (frame.type === MessageType.CutoverRequest) {
        const request = decodeCutoverRequest(frame.meta);
        if (typeof request === 'string') return this.refuse(RefuseCode.BadRequest, request);
        if (!this.session!.tracker) return this.refuse(RefuseCode.BadRequest, 'this source does not track writes');
        this.log.info('destination asked for cutover');
        this.image!.sessions.requestCutover(this.session!, this).catch((e: Error) => {
          // The image stays fenced; the destination asks again on a new connection.
          this.log.error({ err: e.message }, 'cutover failed');
          this.refuse(RefuseCode.ShuttingDown, `cutover failed at the source: ${e.message}`);
        });
        continue;
      }
      if (frame.type === MessageType.Pace) {
        const pace = decodePace(frame.meta);
        if (typeof pace === 'string') return this.refuse(RefuseCode.BadRequest, pace);
        this.session!.pacer.setRate(pace.bytesPerSecond);
        continue;
      }
      if (frame.type === MessageType.ZeroQuery) {
        const query = decodeZeroQuery(frame.meta);
        if (typeof query === 'string') return this.refuse(RefuseCode.BadRequest, query);
        this.answer(query.requestId, answerZeroQuery(this.image!.device, query));
        continue;
      }
      if (frame.type === MessageType.HashQuery) {
        const query = decodeHashQuery(frame.meta);
        if (typeof query === 'string') return this.refuse(RefuseCode.BadRequest, query);
        this.answer(query.requestId, answerHashQuery(this.image!.device, this.hello.blockSize, query));
        continue;
      }
      if (frame.type !== MessageType.Fetch)
        return this.refuse(RefuseCode.BadRequest, `unexpected message type ${frame.type}`);
      const fetch = decodeFetch(frame.meta);
      if (typeof fetch === 'string') return this.refuse(RefuseCode.BadRequest, fetch);
      this.inFlight++;
      const { pool, chooser } = this.options;
      const services = {
        device: this.image!.device,
        pool,
        chooser,
        hasher: this.hasher,
        buffers: this.buffers,
        counters: [this.counters, this.image!.counters],
        log: this.log,
      };
      serveFetch(fetch, this.hello, this.session!.dedupe, this, services, this.maxFetchBytes)
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
    const image = this.options.exports.find(hello.exportName);
    if (typeof image === 'string') {
      // A destination of another wire version hears that first: the export name may not mean the same to it.
      const code = hello.version === WIRE_VERSION ? RefuseCode.UnknownExport : RefuseCode.Version;
      const reason = hello.version === WIRE_VERSION ? image : `wire version ${hello.version} is not supported`;
      return this.refuse(code, reason);
    }
    const { device, identity, sessions } = image;
    const refusal = helloRefusal(hello, image.name, identity);
    if (refusal) return this.refuse(refusal.code, refusal.reason);
    let session: SourceSession | string;
    try {
      session = sessions.open(hello);
    } catch (e) {
      return this.refuse(RefuseCode.ShuttingDown, `cannot record the session: ${(e as Error).message}`);
    }
    if (typeof session === 'string') return this.refuse(RefuseCode.BadRequest, session);
    this.hello = hello;
    sessions.connected(session);
    this.image = image;
    this.session = session;
    image.wireConnections++;
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
        WelcomeFlag.BlockHashes | WelcomeFlag.Pacing,
      ),
    );
    // After WELCOME: the first DIRTY or CUTOVER must not come before it.
    if (hello.role === Role.Urgent) sessions.attachUrgent(session, this);
    this.log.info(
      {
        export: image.name,
        role: hello.role === Role.Urgent ? 'urgent' : 'background',
        blockSize: hello.blockSize,
        session: hello.session,
      },
      'destination connected',
    );
  }

  send(parts: Buffer[], written?: () => void): void {
    if (this.dead) return;
    if (parts.length > 1) this.socket.cork();
    const last = parts.length - 1;
    // The callback of the last write runs once every part is written (or the socket failed).
    parts.forEach((p, i) => {
      if (p.length || (i === last && written))
        this.socket.write(p, i === last && written ? () => written() : undefined);
    });
    if (parts.length > 1) this.socket.uncork();
  }

  /** Sends a query's answer when it is ready (FETCH_ERROR if it failed); it counts as in flight until then. */
  private answer(requestId: number, reply: Promise<Buffer>): void {
    this.inFlight++;
    reply
      .then((frame) => this.send([frame]))
      .catch((e: Error) => {
        this.send([encodeFetchError({ requestId, code: FetchErrorCode.ReadError, reason: e.message })]);
      })
      .finally(() => {
        this.inFlight--;
        this.pump();
      });
  }

  private refuse(code: RefuseCode, reason: string): void {
    this.log.warn({ code, reason }, 'refusing destination');
    this.send([encodeRefuse({ code, reason })]);
    this.dead = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }
}
