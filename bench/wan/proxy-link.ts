/**
 * The fallback WAN: SlowLink proxies on loopback. Delay and rate are applied to the byte
 * stream rather than to packets, so TCP's own behaviour (slow start, loss recovery) is not
 * emulated, and there is no loss.
 */
import type { Logger } from 'pino';
import { SlowLink } from '../../src/link/slow-link';
import { measureFidelity } from './fidelity';
import {
  checkWanLinkOptions,
  type LinkFidelity,
  type WanCounters,
  type WanLink,
  type WanLinkOptions,
} from './wan-link';

export class ProxyLink implements WanLink {
  readonly kind = 'userspace-proxy';
  readonly sourcePrefix: string[] = [];
  readonly destPrefix: string[] = [];
  readonly sourceListenHost = '127.0.0.1';
  readonly note: string;
  private readonly proxies = new Map<number, { link: SlowLink; address: Promise<{ host: string; port: number }> }>();
  private closed = false;

  constructor(
    private readonly options: WanLinkOptions,
    why: string,
    private readonly log?: Logger,
  ) {
    checkWanLinkOptions(options);
    // SlowLink shares its budget among its connections but not across instances (one target each).
    this.note =
      `userspace proxy on loopback (${why}); each reached port is a separate link with its own ` +
      `bandwidth budget, so a scenario should reach one source port` +
      (options.loss ? `; loss ${options.loss} requested but not supported, none applied` : '; no loss support');
  }

  async reach(port: number): Promise<{ host: string; port: number }> {
    if (this.closed) throw new Error(`wan link: reach(${port}) after close`);
    let proxy = this.proxies.get(port);
    if (!proxy) {
      const link = new SlowLink({
        listen: { host: '127.0.0.1', port: 0 },
        target: { host: this.sourceListenHost, port },
        oneWayLatencyMs: this.options.oneWayLatencyMs,
        bandwidthBitsPerSecond: this.options.bandwidthBitsPerSecond,
        log: this.log,
      });
      proxy = { link, address: link.start() };
      this.proxies.set(port, proxy);
    }
    return proxy.address;
  }

  counters(): WanCounters {
    let bytesToDest = 0;
    let bytesToSource = 0;
    for (const { link } of this.proxies.values()) {
      const s = link.stats();
      // The destination is the proxy's client; the source is its target.
      bytesToDest += s.bytesFromTarget;
      bytesToSource += s.bytesToTarget;
    }
    return { bytesToDest, bytesToSource };
  }
  async freshCounters(): Promise<WanCounters> {
    return this.counters();
  }

  async measure(): Promise<LinkFidelity> {
    // A connect completes at the proxy on loopback, so the round trip is timed with a ping-pong.
    return measureFidelity(this, 'pingPong');
  }

  async close(): Promise<void> {
    this.closed = true;
    const links = [...this.proxies.values()].map((p) => p.link);
    this.proxies.clear();
    await Promise.all(links.map((l) => l.close()));
  }
}
