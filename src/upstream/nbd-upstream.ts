/**
 * A plain NBD server as the upstream: two connections, one for urgent
 * fetches and one for the background copy, so an on-demand read never queues
 * behind background bytes on the same socket. Reconnects with backoff until
 * closed, and refuses a server whose export name or size is not the one
 * recorded. With a QEMU dirty bitmap it can tell which blocks the source VM
 * wrote; without one it cannot, and nothing may be copied before cutover.
 */
import { EventEmitter } from 'node:events';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { NbdClient, NbdError, type NbdClientOptions } from '../nbd/client';
import { largeBuffers } from '../nbd/buffer-pool';
import { BASE_ALLOCATION, NbdErrno } from '../nbd/protocol';
import { parseNbdUrl, NbdTarget } from '../nbd/url';
import { ExtentFlags, type Extent } from '../store/block-device';
import { Gate, retry } from '../util/backoff';
import {
  emptyLinkStats,
  type ByteRange,
  type FetchPriority,
  type LinkStats,
  type Upstream,
  type WriteTracking,
  type DirtyReport,
  type ZeroRangeAnswer,
} from './upstream';

export interface NbdUpstreamOptions {
  /** First reconnect delay; doubles up to maxBackoffMs. */
  minBackoffMs: number;
  maxBackoffMs: number;
  connectTimeoutMs: number;
  /** A connection whose server sends nothing for this long while requests wait is dropped (and replaced). */
  stallTimeoutMs: number;
  /**
   * A QEMU dirty bitmap the server exports (meta context qemu:dirty-bitmap:NAME)
   * that records every write to the source since before the first block was
   * copied. Tracking is then 'bitmap' and cutover() returns its dirty extents.
   */
  dirtyBitmap?: string;
}

export const DEFAULT_NBD_UPSTREAM_OPTIONS: NbdUpstreamOptions = {
  minBackoffMs: 100,
  maxBackoffMs: 5000,
  connectTimeoutMs: 10_000,
  stallTimeoutMs: 30_000,
};

/** Longest block-status request: the length field is 32 bits; 1 GiB keeps any minimum block size's alignment. */
const MAX_STATUS_SPAN = 1 << 30;
/** In a qemu:dirty-bitmap context, flag bit 0 set means the range was written since the bitmap was enabled. */
const DIRTY_FLAG = 1;

export function dirtyBitmapContext(name: string): string {
  return `qemu:dirty-bitmap:${name}`;
}

/**
 * The identity a plain NBD source is recorded under: its export name and
 * size. Its content is not part of it: before cutover the source VM may
 * write anywhere.
 */
export function nbdIdentity(exportName: string, size: number): string {
  const hash = crypto.createHash('sha256').update(`nbd:${exportName}:${size}`).digest('hex');
  return `nbd-export:${hash.slice(0, 32)}`;
}

export class NbdUpstream extends EventEmitter implements Upstream {
  size = 0;
  identity = '';
  reconnects = 0;
  readonly tracking: WriteTracking;
  /** A QEMU bitmap outlives ferry's connections; there is no epoch to compare. */
  /**
   * The dirty bitmap the blocks copied before cutover are tracked by: a
   * destination restarted with another bitmap (or none) must not trust them.
   */
  get trackingEpoch(): string {
    const name = this.options.dirtyBitmap;
    if (!name) return '';
    const epoch = `bitmap:${name}`;
    return Buffer.byteLength(epoch) <= 64
      ? epoch
      : `bitmap#${crypto.createHash('sha256').update(name).digest('hex').slice(0, 32)}`;
  }
  private bytesFetched = 0;
  /** Bytes read by connections that are gone (so the count on the wire only grows). */
  private bytesReceivedBefore = 0;
  private urgent: NbdClient | null = null;
  private background: NbdClient | null = null;
  private target: NbdTarget;
  private readonly bitmapContext: string | null;
  /** Fires on close(): ends the reconnect loop, any connection attempt and every wait. */
  private readonly stop = new AbortController();
  private readonly up = new Gate();
  private connecting: Promise<void> | null = null;

  private constructor(
    private url: string,
    private readonly log: Logger,
    private readonly options: NbdUpstreamOptions,
  ) {
    super();
    this.target = parseNbdUrl(url);
    this.bitmapContext = options.dirtyBitmap ? dirtyBitmapContext(options.dirtyBitmap) : null;
    this.tracking = this.bitmapContext ? 'bitmap' : 'none';
  }

  /** Connects once; a failure here is the operator's to fix, so it is thrown, not retried. */
  static async open(url: string, log: Logger, options = DEFAULT_NBD_UPSTREAM_OPTIONS): Promise<NbdUpstream> {
    const upstream = new NbdUpstream(url, log, options);
    try {
      await upstream.connectOnce();
    } catch (e) {
      await upstream.close();
      throw e;
    }
    return upstream;
  }

  get connected(): boolean {
    return this.urgent !== null && this.background !== null;
  }

  get description(): string {
    return this.url;
  }

  /**
   * The dirty bitmap's extents over the whole image (the source VM is stopped
   * by now, so reading it again gives the same set). Without a bitmap: nothing.
   */
  async cutover(): Promise<DirtyReport> {
    const ack = (): void => undefined; // the bitmap belongs to the source's operator; nothing to forget
    const context = this.bitmapContext;
    if (!context) return { ranges: [], ack };
    const ranges: ByteRange[] = [];
    let span = MAX_STATUS_SPAN;
    for (let at = 0; at < this.size;) {
      const client = await this.ready('urgent');
      const asked = Math.min(span, this.size - at);
      let extents: Extent[];
      try {
        extents = await client.blockStatus(at, asked, context);
      } catch (e) {
        if (e instanceof NbdError && (e.errno === NbdErrno.EOVERFLOW || e.errno === NbdErrno.EINVAL)) {
          const max = maxPayload(client);
          if (span > max) {
            span = max; // the server wants requests no longer than its maximum payload
            continue;
          }
        }
        if (client.isClosed && !this.stop.signal.aborted) continue; // the link dropped: ask again once reconnected
        throw e;
      }
      const covered = walkExtents(extents, at, asked, (offset, length, flags) => {
        if (flags & DIRTY_FLAG) appendRange(ranges, offset, length);
      });
      if (covered === 0) throw new Error(`NBD block status of ${context} at ${at} described nothing`);
      at += covered;
    }
    this.log.info(
      { source: this.url, bitmap: this.options.dirtyBitmap, ranges: ranges.length, bytes: sumLengths(ranges) },
      'dirty bitmap read',
    );
    return { ranges, ack };
  }

  async fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer> {
    const client = await this.ready(priority);
    const max = maxPayload(client);
    let data: Buffer;
    if (length <= max) data = await client.read(offset, length);
    else {
      data = Buffer.allocUnsafe(length);
      for (let at = 0; at < length; at += max) {
        const part = await client.read(offset + at, Math.min(max, length - at));
        part.copy(data, at);
        largeBuffers.give(part);
      }
    }
    this.bytesFetched += data.length;
    return data;
  }

  /** READ replies are buffers of the process's pool (src/nbd/buffer-pool.ts). */
  recycle(data: Buffer): void {
    largeBuffers.give(data);
  }

  /** From base:allocation on the urgent connection (NBD_STATE_ZERO extents); null if the server has none. */
  async zeroRanges(offset: number, length: number): Promise<ZeroRangeAnswer | null> {
    const client = await this.ready('urgent');
    if (client.metaContextId(BASE_ALLOCATION) === undefined) return null;
    const asked = Math.min(length, MAX_STATUS_SPAN);
    const extents = await client.blockStatus(offset, asked, BASE_ALLOCATION);
    const ranges: ZeroRangeAnswer['ranges'] = [];
    const covered = walkExtents(extents, offset, asked, (at, len, flags) => {
      if (flags & ExtentFlags.Zero) appendRange(ranges, at, len);
    });
    if (covered === 0) throw new Error(`NBD block status at ${offset} described nothing`);
    return { covered, ranges };
  }

  bytesRead(): number {
    let bytes = this.bytesReceivedBefore;
    for (const c of [this.urgent, this.background]) bytes += c?.bytesReceived ?? 0;
    return bytes;
  }

  linkStats(): LinkStats {
    return {
      ...emptyLinkStats(),
      // What the sockets read: a server that sends holes as hole chunks moves fewer bytes than it describes.
      bytesOnWire: this.bytesRead(),
      bytesBeforeEncoding: this.bytesFetched,
    };
  }

  async reconnect(url?: string): Promise<void> {
    if (url && url !== this.url) {
      // Check the new address first: a wrong one is refused here and the working connections stay up.
      const target = parseNbdUrl(url);
      const probe = await NbdClient.connect(target.address, this.clientOptions(target, true));
      try {
        this.checkSource(probe, target, url);
      } finally {
        probe.destroy();
      }
      this.target = target;
      this.url = url;
    }
    this.dropClients();
    await this.connectWithBackoff();
  }

  async close(): Promise<void> {
    this.stop.abort();
    this.up.close(new Error('upstream closed'));
    const clients = [this.urgent, this.background];
    this.retire(clients);
    this.urgent = this.background = null;
    await Promise.all(clients.map((c) => c?.close().catch(() => c.destroy())));
    await this.connecting;
  }

  /** The connection for `priority`, once connected; rejects once closed. */
  private async ready(priority: FetchPriority): Promise<NbdClient> {
    for (;;) {
      await this.up.wait();
      const client = priority === 'urgent' ? this.urgent : this.background;
      if (client && this.connected) return client;
    }
  }

  private clientOptions(target: NbdTarget, structured: boolean): NbdClientOptions {
    return {
      exportName: target.exportName,
      structured,
      metaContexts: this.bitmapContext ? [BASE_ALLOCATION, this.bitmapContext] : [BASE_ALLOCATION],
      connectTimeoutMs: this.options.connectTimeoutMs,
      stallTimeoutMs: this.options.stallTimeoutMs,
      signal: this.stop.signal,
    };
  }

  /** Refuses a server that is not the image recorded, or lacks the dirty bitmap asked for. */
  private checkSource(client: NbdClient, target: NbdTarget, url: string): void {
    const identity = nbdIdentity(target.exportName, client.size);
    if (this.identity && identity !== this.identity) {
      throw new Error(
        `source at ${url} is not the image being migrated (export "${target.exportName}", size ${client.size}; ` +
          `expected export "${this.target.exportName}", size ${this.size})`,
      );
    }
    if (this.bitmapContext && client.metaContextId(this.bitmapContext) === undefined) {
      throw new Error(
        `source at ${url} does not offer the dirty bitmap "${this.options.dirtyBitmap}" ` +
          `(NBD meta context ${this.bitmapContext}` +
          (client.structuredReplies ? '' : `; the server has no structured replies (${client.negotiation})`) +
          `): export it with qemu-nbd -B ${this.options.dirtyBitmap}, or block-export-add with bitmaps`,
      );
    }
    if (this.bitmapContext && client.readOnly) {
      // QEMU refuses an enabled bitmap on a read-only export of a writable disk: one exported read-only
      // may be disabled, recording none of the writes made through other exports.
      throw new Error(
        `source at ${url} exports the dirty bitmap "${this.options.dirtyBitmap}" read-only, where QEMU exports ` +
          `only a disabled bitmap (one that records no writes); export it writable (ferry only reads)`,
      );
    }
  }

  private async connectOnce(): Promise<void> {
    const target = this.target;
    // The urgent connection negotiates the meta contexts; the background one keeps simple replies.
    // Both at once: each handshake is a few round trips, which over a WAN is most of a start.
    const [u, b] = await Promise.allSettled([
      NbdClient.connect(target.address, this.clientOptions(target, true)),
      NbdClient.connect(target.address, this.clientOptions(target, false)),
    ]);
    if (u.status === 'rejected' || b.status === 'rejected') {
      if (u.status === 'fulfilled') u.value.destroy();
      if (b.status === 'fulfilled') b.value.destroy();
      throw u.status === 'rejected' ? u.reason : (b as PromiseRejectedResult).reason;
    }
    const urgent = u.value;
    const background = b.value;
    try {
      if (urgent.isClosed || background.isClosed) throw new Error(`source at ${this.url} closed the connection`);
      if (this.stop.signal.aborted) throw new Error('upstream closed');
      if (urgent.size !== background.size) throw new Error(`source at ${this.url} changed size while connecting`);
      this.checkSource(urgent, target, this.url);
      if (this.identity) this.reconnects++;
      this.size = urgent.size;
      this.identity = nbdIdentity(target.exportName, urgent.size);
    } catch (e) {
      urgent.destroy();
      background.destroy();
      throw e;
    }
    for (const client of [urgent, background]) client.once('close', () => this.onClientClosed(client));
    this.urgent = urgent;
    this.background = background;
    this.up.open();
    this.emit('connected');
  }

  private onClientClosed(client: NbdClient): void {
    if (client !== this.urgent && client !== this.background) return;
    this.dropClients();
    if (this.stop.signal.aborted) return;
    this.log.warn({ source: this.url }, 'source connection lost; reconnecting');
    this.emit('disconnected');
    void this.connectWithBackoff().catch(() => undefined);
  }

  private dropClients(): void {
    const clients = [this.urgent, this.background];
    this.retire(clients);
    this.urgent = this.background = null;
    this.up.shut();
    for (const c of clients) c?.destroy();
  }

  private retire(clients: Array<NbdClient | null>): void {
    for (const c of clients) this.bytesReceivedBefore += c?.bytesReceived ?? 0;
  }

  /** Connects again, with backoff, until connected or closed; one loop at a time. */
  private connectWithBackoff(): Promise<void> {
    this.connecting ??= (async () => {
      const signal = this.stop.signal;
      // A connection that drops right after it came up is connected again here.
      while (!this.connected && !signal.aborted) {
        await retry(() => this.connectOnce(), {
          minMs: this.options.minBackoffMs,
          maxMs: this.options.maxBackoffMs,
          signal,
          onRetry: (err, _attempt, delayMs) => {
            this.emit('connect-failed', err);
            this.log.warn({ source: this.url, err: (err as Error).message, retryMs: delayMs }, 'source unreachable');
          },
        }).then(
          () => this.log.info({ source: this.url, reconnects: this.reconnects }, 'source reconnected'),
          () => undefined, // only when closed
        );
      }
    })().finally(() => (this.connecting = null));
    return this.connecting;
  }
}

/** Largest READ to send: the server's maximum payload, within what every server takes (32 MiB). */
function maxPayload(client: NbdClient): number {
  const { minimum, maximum } = client.blockSize;
  const max = Math.max(4096, Math.min(maximum || 32 << 20, 32 << 20));
  return minimum > 1 ? Math.max(minimum, max - (max % minimum)) : max;
}

/**
 * Visits the extents of a block-status answer for [offset, offset+asked),
 * clipped to it; returns how many bytes they covered (a server may describe less).
 */
function walkExtents(
  extents: Extent[],
  offset: number,
  asked: number,
  visit: (offset: number, length: number, flags: number) => void,
): number {
  let at = offset;
  for (const e of extents) {
    const length = Math.min(e.length, offset + asked - at);
    if (length <= 0) break;
    visit(at, length, e.flags);
    at += length;
  }
  return at - offset;
}

/** Appends a range, merged with the last one when they touch (memory stays bounded by the runs, not the extents). */
function appendRange(ranges: ByteRange[], offset: number, length: number): void {
  const last = ranges[ranges.length - 1];
  if (last && last.offset + last.length === offset) last.length += length;
  else ranges.push({ offset, length });
}

function sumLengths(ranges: ByteRange[]): number {
  return ranges.reduce((n, r) => n + r.length, 0);
}
