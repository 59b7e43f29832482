/**
 * An emulated WAN between a "source host" and a "destination host" on this
 * machine. Two implementations: network namespaces joined by a userspace
 * TUN bridge (real packets, real TCP), and, where namespaces are not
 * permitted, a userspace TCP proxy (SlowLink) on loopback.
 */

export interface WanLinkOptions {
  /** Per direction. */
  bandwidthBitsPerSecond: number;
  oneWayLatencyMs: number;
  /** Packet loss in [0, 1); only the namespace bridge can do it. */
  loss?: number;
  /** TCP congestion control inside the namespaces (e.g. cubic); default: the host's. */
  congestionControl?: string;
}

export interface LinkFidelity {
  /** Measured TCP round trip (connect time or a ping-pong), ms. */
  rttMs: number;
  /** Measured bulk throughput source → destination, bits per second. */
  throughputBitsPerSecond: number;
}

export interface WanCounters {
  /** Bytes carried source → destination and back, since start. */
  bytesToDest: number;
  bytesToSource: number;
  /**
   * Packets source → destination by the time they waited in the bottleneck's
   * queue, in 1 ms buckets (the last open-ended); empty where the link cannot tell.
   */
  queueDelayToDest?: number[];
}

export interface WanLink {
  readonly kind: 'netns-tun-bridge' | 'userspace-proxy';
  /** Why this kind was chosen (e.g. why the namespaces were not used). */
  readonly note: string;
  /** argv prefix that runs a command on the source host (e.g. ['ip', 'netns', 'exec', 'ferry-src']); [] on loopback. */
  readonly sourcePrefix: string[];
  readonly destPrefix: string[];
  /** The address a server on the source host should listen on. */
  readonly sourceListenHost: string;
  /**
   * Where the destination host reaches a server listening on the source host
   * at `port` (for the proxy this starts a proxy for that port).
   */
  reach(port: number): Promise<{ host: string; port: number }>;
  counters(): WanCounters;
  /** The counters as of now (counters() may lag: the namespace bridge reports every 250 ms). */
  freshCounters(): Promise<WanCounters>;
  /** Measures what the link really delivers (RTT and throughput). */
  measure(): Promise<LinkFidelity>;
  close(): Promise<void>;
}

/** Throws on options no link could honour, so that a bad value is not mistaken for a missing capability. */
export function checkWanLinkOptions(options: WanLinkOptions): void {
  const { bandwidthBitsPerSecond: rate, oneWayLatencyMs: latency, loss = 0 } = options;
  if (!(rate > 0) || !Number.isFinite(rate))
    throw new Error(`wan link: bandwidthBitsPerSecond must be a number > 0 (got ${rate})`);
  if (!(latency >= 0) || !Number.isFinite(latency))
    throw new Error(`wan link: oneWayLatencyMs must be a number >= 0 (got ${latency})`);
  if (!(loss >= 0 && loss < 1)) throw new Error(`wan link: loss must be in [0, 1) (got ${loss})`);
}
