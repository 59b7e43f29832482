/**
 * The client's requests in flight: one per cookie, completed by a simple
 * reply or by structured reply chunks (data, holes, extents, errors) up to
 * the chunk flagged DONE. Bytes in (decoded replies), settled promises out;
 * the socket is the caller's.
 */
import type { Extent } from '../store/block-device';
import { COMMAND_NAMES, Command, NbdErrno, ReplyFlag, ReplyType } from './protocol';

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

export type ReplyValue = Buffer | Extent[] | null;

interface Pending {
  type: Command;
  offset: number;
  length: number;
  /** BLOCK_STATUS: the meta context whose extents are wanted (the server sends one chunk per context). */
  contextId: number;
  resolve: (value: ReplyValue) => void;
  reject: (err: Error) => void;
  data: Buffer | null;
  extents: Extent[] | null;
  error: NbdError | null;
}

/** Structured reply chunk payloads: offset (8) before the data; error (4) and message length (2) before the text. */
const OFFSET_BYTES = 8;
const ERROR_HEADER_BYTES = 6;
/** BLOCK_STATUS payload: the context id, then (length, flags) pairs. */
const CONTEXT_ID_BYTES = 4;
const EXTENT_BYTES = 8;

export class ClientRequests {
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;

  /**
   * `onIdle` runs each time the last request in flight completes; a READ's
   * data goes into a buffer from `takeBuffer` (zero-filled here, as holes and
   * gaps must read as zeros).
   */
  constructor(
    private readonly onIdle: () => void,
    private readonly takeBuffer: (length: number) => Buffer = (length) => Buffer.allocUnsafe(length),
  ) {}

  get size(): number {
    return this.pending.size;
  }

  /** The payload length a READ's simple reply carries (0 for anything else): the decoder needs it. */
  readLength(cookie: bigint): number {
    const p = this.pending.get(cookie);
    return p && p.type === Command.Read ? p.length : 0;
  }

  /** Registers a request; send it with the cookie returned. */
  add(
    type: Command,
    offset: number,
    length: number,
    contextId: number,
  ): { cookie: bigint; reply: Promise<ReplyValue> } {
    const cookie = this.nextCookie++;
    const reply = new Promise<ReplyValue>((resolve, reject) => {
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
    });
    return { cookie, reply };
  }

  onSimple(cookie: bigint, error: number, data: Buffer | null): void {
    const p = this.pending.get(cookie);
    if (!p) return;
    this.remove(cookie);
    if (error) p.reject(new NbdError(error, `${describe(p)} failed with error ${error}`));
    else p.resolve(p.type === Command.Read ? (data ?? Buffer.alloc(0)) : null);
  }

  /** A structured reply chunk; returns a protocol error to drop the connection for, or null. */
  onChunk(cookie: bigint, flags: number, type: number, payload: Buffer): string | null {
    const p = this.pending.get(cookie);
    if (!p) return null;
    if (type === ReplyType.OffsetData) {
      const offset =
        payload.length >= OFFSET_BYTES ? payload.readUInt32BE(0) * 0x100000000 + payload.readUInt32BE(4) : -1;
      if (offset < p.offset || offset + payload.length - OFFSET_BYTES > p.offset + p.length)
        return 'data chunk outside the request';
      p.data ??= this.takeBuffer(p.length).fill(0);
      payload.copy(p.data, offset - p.offset, OFFSET_BYTES);
    } else if (type === ReplyType.OffsetHole) {
      p.data ??= this.takeBuffer(p.length).fill(0);
    } else if (type === ReplyType.BlockStatus) {
      p.extents ??= [];
      if (payload.length >= CONTEXT_ID_BYTES && payload.readUInt32BE(0) === p.contextId)
        for (let at = CONTEXT_ID_BYTES; at + EXTENT_BYTES <= payload.length; at += EXTENT_BYTES)
          p.extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
    } else if (type === ReplyType.Error || type === ReplyType.ErrorOffset) {
      if (payload.length < ERROR_HEADER_BYTES) return 'error chunk shorter than its header';
      const errno = payload.readUInt32BE(0);
      const text = payload.toString('utf8', ERROR_HEADER_BYTES, ERROR_HEADER_BYTES + payload.readUInt16BE(4));
      p.error = new NbdError(errno, `${describe(p)} failed with error ${errno}: ${text}`);
    }
    if (flags & ReplyFlag.Done) {
      this.remove(cookie);
      if (p.error) p.reject(p.error);
      else if (p.type === Command.Read) p.resolve(p.data ?? Buffer.alloc(p.length));
      else if (p.type === Command.BlockStatus) p.resolve(p.extents ?? []);
      else p.resolve(null);
    }
    return null;
  }

  /** The connection is gone: every request in flight fails with `err`. */
  failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.onIdle();
  }

  private remove(cookie: bigint): void {
    this.pending.delete(cookie);
    if (this.pending.size === 0) this.onIdle();
  }
}

function describe(p: Pending): string {
  return `NBD ${COMMAND_NAMES[p.type] ?? p.type} at ${p.offset}+${p.length}`;
}
