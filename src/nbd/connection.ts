/**
 * One client connection: handshake, then requests served concurrently and
 * replied to as they complete. Reading pauses while the connection is at its
 * in-flight limit, so a client can never make the server buffer without bound:
 * the bytes of requests in progress and of replies the client has not read
 * yet share one budget, so a client that never reads its replies holds at
 * most that much.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { BlockDeviceError } from '../store/block-device';
import { Command, CommandFlag, NbdErrno, NbdErrnoName } from './protocol';
import { ServerDecoder, RequestMessage } from './server-decoder';
import { ExportTable, Negotiation, NegotiatedSession } from './negotiation';
import { checkRequest } from './request-check';
import * as enc from './server-encoder';
import { largeBuffers } from './buffer-pool';
import { releaseDroppedBuffers } from '../util/release-memory';
import { readIntoLentBuffers } from './socket-read-into';

export interface ConnectionLimits {
  maxInFlightRequests: number;
  /** READ/WRITE bytes in progress plus reply bytes not yet taken by the client. */
  maxInFlightBytes: number;
  maxPayload: number;
  /** The handshake must finish within this time. */
  handshakeTimeoutMs: number;
  /** A connection with nothing in flight that sends nothing for this long is closed; 0: never. */
  idleTimeoutMs: number;
}

/** Option replies a client may leave unread during the handshake before the server stops reading it. */
const HANDSHAKE_UNREAD_BYTES = 256 * 1024;
/** A connection that held this much at once asks for the memory back when it closes. */
const RELEASE_AFTER_BYTES = 8 * 1024 * 1024;

export class NbdConnection {
  private readonly decoder: ServerDecoder;
  private readonly negotiation: Negotiation;
  private session: NegotiatedSession | null = null;
  private inFlight = 0;
  private inFlightBytes = 0;
  private disconnecting = false;
  private closed = false;
  private draining = false; // replies are all sent; whatever the client still sends is dropped
  private handshakeTimer: NodeJS.Timeout | null;
  private idleWaiters: Array<() => void> = [];
  /** A request taken from the decoder that did not fit the byte budget yet. */
  private held: RequestMessage | null = null;
  private peakHeldBytes = 0;
  /** Replies written this turn of the event loop wait corked, then leave in one writev. */
  private batching = false;
  private readonly sendBatch = (): void => {
    this.batching = false;
    this.socket.uncork();
  };
  private readonly socket: Socket;

  /** The export this client uses, once in transmission. */
  get exportName(): string | null {
    return this.session?.export.name ?? null;
  }

  /** `accepted` comes paused (pauseOnConnect); the connection reads it from here on. */
  constructor(
    accepted: Socket,
    exportTable: ExportTable,
    private readonly limits: ConnectionLimits,
    private readonly log: Logger,
  ) {
    this.decoder = new ServerDecoder({
      maxOptionLength: 65536,
      maxWritePayload: limits.maxPayload,
      allocatePayload: takeBuffer,
      releasePayload: giveBuffer,
    });
    this.negotiation = new Negotiation(exportTable, limits.maxPayload);
    // Reads land in memory the decoder lends (a WRITE payload's own buffer);
    // where that is not possible, in the socket's own chunks.
    const lent = readIntoLentBuffers(accepted, {
      target: () => this.decoder.readTarget(),
      received: (n) => {
        this.decoder.received(n);
        if (!this.draining) this.pump();
      },
      wanted: () => this.decoder.readWanted(),
    });
    const socket = (this.socket = lent ?? accepted);
    if (!lent)
      socket.on('data', (chunk: Buffer) => {
        if (this.draining) return;
        this.decoder.push(chunk);
        this.pump();
      });
    socket.resume();
    socket.setNoDelay(true);
    socket.on('drain', () => this.pump());
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'socket error'));
    socket.on('close', () => this.onClose());
    this.handshakeTimer = setTimeout(() => this.hangUp('handshake timed out'), limits.handshakeTimeoutMs);
    if (limits.idleTimeoutMs > 0) {
      // Only a connection with no request in progress counts as idle: a slow device is not the client's fault.
      socket.setTimeout(limits.idleTimeoutMs, () => {
        if (this.inFlight === 0 && this.held === null) this.hangUp('idle timeout', 'info');
      });
    }
    socket.write(enc.greeting());
  }

  /** Resolves when no request is in flight (or the connection is gone). */
  idle(): Promise<void> {
    if (this.inFlight === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops taking requests, lets in-flight ones finish, then closes. */
  async shutdown(): Promise<void> {
    this.disconnecting = true;
    this.socket.pause();
    await this.idle();
    this.endAfterReplies();
  }

  /**
   * Ends our side once every reply is out, then reads (and drops) until the
   * client closes. A paused socket whose writes are done holds no libuv
   * handle, so during shutdown the process could exit before it flushes; and
   * closing with unread input would send an RST that can discard the replies.
   */
  private endAfterReplies(): void {
    this.draining = true;
    this.decoder.close();
    this.socket.end();
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Bytes this connection holds: requests in progress and replies the client has not read. */
  private heldBytes(): number {
    const held = this.inFlightBytes + this.socket.writableLength;
    if (held > this.peakHeldBytes) this.peakHeldBytes = held;
    return held;
  }

  private canTakeMore(): boolean {
    if (this.disconnecting) return false;
    if (!this.session) return this.socket.writableLength < HANDSHAKE_UNREAD_BYTES;
    return this.inFlight < this.limits.maxInFlightRequests && this.heldBytes() < this.limits.maxInFlightBytes;
  }

  /**
   * Whether a request's data fits the budget now. With nothing in progress
   * and the socket below its high-water mark it always does: no completion
   * or 'drain' would come to take it later. A request refused for its length
   * is never given its length.
   */
  private fits(req: RequestMessage): boolean {
    const held = this.heldBytes();
    if (held === 0 || (this.inFlight === 0 && !this.socket.writableNeedDrain)) return true;
    return held + Math.min(payloadBytes(req), this.limits.maxPayload) <= this.limits.maxInFlightBytes;
  }

  private pump(): void {
    while (!this.closed && this.canTakeMore()) {
      const message = this.held ?? this.decoder.next();
      this.held = null;
      if (message === null) break;
      if (message.kind === 'request' && !this.fits(message)) {
        this.held = message;
        break;
      }
      switch (message.kind) {
        case 'protocolError':
          return this.hangUp(message.reason);
        case 'clientFlags': {
          const problem = this.negotiation.clientFlags(message.flags);
          if (problem) return this.hangUp(problem);
          break;
        }
        case 'option': {
          const step = this.negotiation.option(message);
          for (const reply of step.replies) this.socket.write(reply);
          if (step.next === 'close') return this.hangUp(step.reason, 'debug');
          if (step.next === 'transmission') this.startTransmission(step.session);
          break;
        }
        case 'request':
          this.handle(message);
          break;
      }
    }
    // Hold the socket while at a limit; completions and 'drain' call pump() again.
    if (this.closed) return;
    if (this.canTakeMore() && this.held === null) this.socket.resume();
    else if (!this.disconnecting) this.socket.pause();
  }

  private startTransmission(session: NegotiatedSession): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.session = session;
    this.decoder.startTransmission();
    this.log.debug({ export: session.export.name, structured: session.structuredReplies }, 'transmission');
  }

  private handle(req: RequestMessage): void {
    const session = this.session!;
    if (req.type === Command.Disc) {
      this.disconnecting = true;
      void this.idle().then(() => this.endAfterReplies());
      return;
    }
    const problem = checkRequest(req, session, this.limits);
    if (problem) {
      this.replyError(req, problem, `request rejected: ${problem}`);
      return;
    }
    const bytes = payloadBytes(req);
    this.inFlight++;
    this.inFlightBytes += bytes;
    this.execute(req, session)
      .catch((err: unknown) => {
        const errno: NbdErrnoName = err instanceof BlockDeviceError ? err.errno : 'EIO';
        if (!(err instanceof BlockDeviceError)) this.log.error({ err }, 'unexpected device failure');
        this.replyError(req, errno, (err as Error).message);
      })
      .finally(() => {
        // The device is done with the payload once its write settled.
        if (req.payload) largeBuffers.give(req.payload);
        this.inFlight--;
        this.inFlightBytes -= bytes;
        if (this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
        this.pump();
      });
  }

  private async execute(req: RequestMessage, session: NegotiatedSession): Promise<void> {
    const device = session.export.device;
    const fua = (req.flags & CommandFlag.Fua) !== 0;
    switch (req.type) {
      case Command.Read: {
        const data = largeBuffers.take(req.length);
        try {
          await device.read(req.offset, data);
        } catch (err) {
          largeBuffers.give(data);
          throw err;
        }
        this.replyData(req, data);
        return;
      }
      case Command.Write:
        await device.write(req.offset, req.payload!, fua);
        break;
      case Command.Flush:
        await device.flush();
        break;
      case Command.Trim:
        await device.trim(req.offset, req.length, fua);
        break;
      case Command.WriteZeroes:
        await device.zero(req.offset, req.length, {
          fua,
          noHole: (req.flags & CommandFlag.NoHole) !== 0,
          fastZero: (req.flags & CommandFlag.FastZero) !== 0,
        });
        break;
      case Command.Cache:
        await device.cache(req.offset, req.length);
        break;
      case Command.BlockStatus: {
        let extents = await device.status(req.offset, req.length);
        if (req.flags & CommandFlag.ReqOne) extents = extents.slice(0, 1);
        if (this.closed) return;
        this.send(enc.blockStatusChunk(req.cookie, session.baseAllocationId, extents, true));
        return;
      }
    }
    if (!this.closed) this.send(enc.simpleReply(req.cookie, 0));
  }

  /**
   * Queues a reply. Completions that land in the same turn of the event loop
   * (the thread pool hands back several at once under load) share one
   * writev: a syscall per reply was a third of the CPU at 4 KiB requests.
   */
  private send(bytes: Buffer, sent?: () => void): void {
    if (!this.batching) {
      this.batching = true;
      this.socket.cork();
      setImmediate(this.sendBatch);
    }
    this.socket.write(bytes, sent);
  }

  private replyData(req: RequestMessage, data: Buffer): void {
    if (this.closed) return largeBuffers.give(data);
    // Header and payload are queued together, so no other reply can come between them.
    if (this.session!.structuredReplies) {
      if (data.length === 0) this.send(enc.noneChunk(req.cookie));
      else {
        this.send(enc.offsetDataHeader(req.cookie, req.offset, data.length, true));
        this.send(data, () => largeBuffers.give(data));
      }
    } else {
      this.send(enc.simpleReply(req.cookie, 0));
      this.send(data, () => largeBuffers.give(data));
    }
  }

  private replyError(req: RequestMessage, errno: NbdErrnoName, message: string): void {
    if (this.closed) return;
    const value = NbdErrno[errno];
    const structured =
      this.session!.structuredReplies && (req.type === Command.Read || req.type === Command.BlockStatus);
    this.send(structured ? enc.errorChunk(req.cookie, value, message) : enc.simpleReply(req.cookie, value));
  }

  private hangUp(reason: string, level: 'warn' | 'info' | 'debug' = 'warn'): void {
    if (this.closed) return;
    this.log[level]({ reason }, 'closing connection');
    this.disconnecting = true;
    this.socket.end();
    // A peer that never reads our FIN must not hold the socket forever.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  private onClose(): void {
    this.closed = true;
    this.decoder.close();
    if (this.held?.payload) largeBuffers.give(this.held.payload);
    this.held = null;
    // Replies it never read are garbage now: a big pile of them goes back to the system at once.
    if (this.peakHeldBytes >= RELEASE_AFTER_BYTES) releaseDroppedBuffers();
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    for (const wake of this.idleWaiters.splice(0)) wake();
    this.log.debug('connection closed');
  }
}

/** The READ reply or WRITE payload a request makes the server hold. */
function payloadBytes(req: RequestMessage): number {
  return req.type === Command.Read || req.type === Command.Write ? req.length : 0;
}

function takeBuffer(length: number): Buffer {
  return largeBuffers.take(length);
}

function giveBuffer(buffer: Buffer): void {
  largeBuffers.give(buffer);
}
