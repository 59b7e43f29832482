/**
 * A plain NBD server as the upstream: two connections, one for urgent
 * fetches and one for the background copy, so an on-demand read never queues
 * behind background bytes on the same socket. Reconnects with backoff and
 * refuses a server whose image is not the one recorded.
 */
import { EventEmitter } from 'node:events';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { NbdClient } from '../nbd/client';
import { parseNbdUrl, NbdTarget } from '../nbd/url';
import { ExtentFlags } from '../store/block-device';
import {
  emptyLinkStats,
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
}

export const DEFAULT_NBD_UPSTREAM_OPTIONS: NbdUpstreamOptions = {
  minBackoffMs: 100,
  maxBackoffMs: 5000,
  connectTimeoutMs: 10_000,
};

/** Sampled content that identifies a plain NBD source image (it has no identity of its own). */
const IDENTITY_SAMPLES = 16;
const IDENTITY_SAMPLE_BYTES = 4096;
/** Longest block-status request (the length field is 32 bits). */
const MAX_STATUS_SPAN = 1 << 30;

export class NbdUpstream extends EventEmitter implements Upstream {
  size = 0;
  identity = '';
  reconnects = 0;
  private bytesFetched = 0;
  private replies = 0;
  private urgent: NbdClient | null = null;
  private background: NbdClient | null = null;
  private target: NbdTarget;
  private closing = false;
  private connecting: Promise<void> | null = null;
  private waiters: Array<() => void> = [];

  private constructor(
    private url: string,
    private readonly log: Logger,
    private readonly options: NbdUpstreamOptions,
  ) {
    super();
    this.target = parseNbdUrl(url);
  }

  /** Connects once; a failure here is the operator's to fix, so it is thrown, not retried. */
  static async open(url: string, log: Logger, options = DEFAULT_NBD_UPSTREAM_OPTIONS): Promise<NbdUpstream> {
    const upstream = new NbdUpstream(url, log, options);
    await upstream.connectOnce();
    return upstream;
  }

  get connected(): boolean {
    return this.urgent !== null && this.background !== null;
  }

  /** A plain NBD source reports no writes: nothing is copied before cutover. */
  readonly tracking: WriteTracking = 'none';
  readonly trackingEpoch = '';

  cutover(): Promise<DirtyReport> {
    return Promise.resolve({ ranges: [], ack: () => undefined });
  }

  get description(): string {
    return this.url;
  }

  async fetch(offset: number, length: number, priority: FetchPriority): Promise<Buffer> {
    while (!this.connected) {
      if (this.closing) throw new Error('upstream closed');
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    const client = priority === 'urgent' ? this.urgent! : this.background!;
    // Stay within the server's largest request (qemu-nbd and nbdkit refuse more than 32 MiB).
    const max = Math.max(4096, Math.min(client.blockSize.maximum || 32 << 20, 32 << 20));
    let data: Buffer;
    if (length <= max) data = await client.read(offset, length);
    else {
      data = Buffer.allocUnsafe(length);
      for (let at = 0; at < length; at += max)
        (await client.read(offset + at, Math.min(max, length - at))).copy(data, at);
    }
    this.bytesFetched += data.length;
    this.replies += Math.ceil(length / max);
    return data;
  }

  /** From base:allocation on the urgent connection (NBD_STATE_ZERO extents); null if the server has none. */
  async zeroRanges(offset: number, length: number): Promise<ZeroRangeAnswer | null> {
    while (!this.connected) {
      if (this.closing) throw new Error('upstream closed');
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    const client = this.urgent!;
    if (!client.baseAllocationId) return null;
    // The request length is 32 bits; stay well inside it and on a block boundary.
    const asked = Math.min(length, MAX_STATUS_SPAN);
    const extents = await client.blockStatus(offset, asked);
    this.replies++;
    const ranges: ZeroRangeAnswer['ranges'] = [];
    let at = offset;
    for (const e of extents) {
      const len = Math.min(e.length, offset + asked - at);
      if (len <= 0) break;
      if (e.flags & ExtentFlags.Zero) {
        const last = ranges[ranges.length - 1];
        if (last && last.offset + last.length === at) last.length += len;
        else ranges.push({ offset: at, length: len });
      }
      at += len;
    }
    if (at === offset) throw new Error(`NBD block status at ${offset} described nothing`);
    return { covered: at - offset, ranges };
  }

  linkStats(): LinkStats {
    // Plain NBD: the bytes as they are, plus a 16-byte reply header each.
    return {
      ...emptyLinkStats(),
      bytesOnWire: this.bytesFetched + 16 * this.replies,
      bytesBeforeEncoding: this.bytesFetched,
    };
  }

  async reconnect(url?: string): Promise<void> {
    if (url && url !== this.url) {
      // Check the new address first: a wrong one is refused here and the working connections stay up.
      const target = parseNbdUrl(url);
      const probe = await NbdClient.connect(target.address, {
        exportName: target.exportName,
        structured: false,
        connectTimeoutMs: this.options.connectTimeoutMs,
      });
      try {
        const identity = await sampleIdentity(probe, target.exportName);
        if (probe.size !== this.size || identity !== this.identity) {
          throw new Error(
            `${url} serves another image (size ${probe.size}, identity ${identity}; expected ${this.size}, ${this.identity})`,
          );
        }
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
    this.closing = true;
    const clients = [this.urgent, this.background];
    this.urgent = this.background = null;
    await Promise.all(clients.map((c) => c?.close().catch(() => c.destroy())));
    for (const wake of this.waiters.splice(0)) wake();
  }

  private async connectOnce(): Promise<void> {
    const opts = {
      exportName: this.target.exportName,
      structured: false,
      connectTimeoutMs: this.options.connectTimeoutMs,
    };
    // The urgent connection negotiates base:allocation for zeroRanges; the background one keeps simple replies.
    const urgent = await NbdClient.connect(this.target.address, { ...opts, structured: true });
    let background: NbdClient;
    try {
      background = await NbdClient.connect(this.target.address, opts);
    } catch (e) {
      urgent.destroy();
      throw e;
    }
    // Watch them from the start: one that dies while its identity is sampled must not be kept.
    let dead = false;
    for (const client of [urgent, background]) client.once('close', () => (dead = true));
    try {
      const identity = await sampleIdentity(urgent, this.target.exportName);
      if (dead || urgent.isClosed || background.isClosed)
        throw new Error(`source at ${this.url} closed the connection`);
      if (this.closing) throw new Error('upstream closed');
      if (this.identity && (urgent.size !== this.size || identity !== this.identity)) {
        throw new Error(
          `source at ${this.url} is not the image being migrated (size ${urgent.size}, expected ${this.size}; identity ${identity}, expected ${this.identity})`,
        );
      }
      this.size = urgent.size;
      this.identity = identity;
    } catch (e) {
      urgent.destroy();
      background.destroy();
      throw e;
    }
    for (const client of [urgent, background]) client.once('close', () => this.onClientClosed(client));
    this.urgent = urgent;
    this.background = background;
    this.emit('connected');
    for (const wake of this.waiters.splice(0)) wake();
  }

  private onClientClosed(client: NbdClient): void {
    if (client !== this.urgent && client !== this.background) return;
    this.dropClients();
    if (this.closing) return;
    this.log.warn({ source: this.url }, 'source connection lost; reconnecting');
    this.emit('disconnected');
    void this.connectWithBackoff().catch(() => undefined);
  }

  private dropClients(): void {
    const clients = [this.urgent, this.background];
    this.urgent = this.background = null;
    for (const c of clients) c?.destroy();
  }

  private connectWithBackoff(): Promise<void> {
    this.connecting ??= (async () => {
      let delay = this.options.minBackoffMs;
      while (!this.closing && !this.connected) {
        try {
          await this.connectOnce();
          this.reconnects++;
          this.log.info({ source: this.url, reconnects: this.reconnects }, 'source reconnected');
        } catch (e) {
          this.emit('connect-failed', e);
          this.log.warn({ source: this.url, err: (e as Error).message, retryMs: delay }, 'source unreachable');
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, this.options.maxBackoffMs);
        }
      }
    })().finally(() => (this.connecting = null));
    return this.connecting;
  }
}

/** Hash of the export name, size and sampled blocks spread over the image. */
async function sampleIdentity(client: NbdClient, exportName: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  hash.update(`nbd:${exportName}:${client.size}`);
  const sampleLength = Math.min(IDENTITY_SAMPLE_BYTES, client.size);
  if (sampleLength > 0) {
    const offsets = new Set<number>();
    for (let i = 0; i < IDENTITY_SAMPLES; i++) {
      offsets.add(Math.floor(((client.size - sampleLength) * i) / (IDENTITY_SAMPLES - 1) / 512) * 512);
    }
    const samples = await Promise.all([...offsets].map((o) => client.read(o, sampleLength)));
    for (const s of samples) hash.update(s);
  }
  return `nbd-sha256:${hash.digest('hex').slice(0, 32)}`;
}
