/**
 * The daemon's shared background windows, one per source host: disks whose
 * sources sit on one host (whatever the port or export) reach it over one
 * path and share its bottleneck, so their background copies share one
 * HostWindow. Disks copying from different hosts get different windows, each
 * learned from its own aggregate rate: paths that do not share a bottleneck
 * do not hold each other back. (Two source hosts behind one slow link still
 * get a window each; each window is bounded by its own measured rate and
 * latency, so the queue there is at most about one headroom per host.)
 */
import { HostWindow, type HostWindowMember } from '../migrate/host-window';

export interface SourceWindowsOptions {
  /** Blocks per background batch times the block size: a window starts at two of them. */
  batchBytes: number;
  /** The per-copy window ceiling (copy.window_bytes): a host window is bounded by four of them. */
  windowBytes: number;
  now?: () => number;
}

/** A window's floor: one small run may always be in flight, and a latency probe drops to it. */
const FLOOR_BYTES = 64 * 1024;

export class SourceWindows {
  private readonly windows = new Map<string, HostWindow>();

  constructor(private readonly options: SourceWindowsOptions) {}

  /** A place for one disk's copy in the window of its source's host. */
  join(sourceUrl: string, weight: number): HostWindowMember {
    const key = sourceHost(sourceUrl);
    let window = this.windows.get(key);
    if (!window) {
      window = new HostWindow({
        initialBytes: 2 * this.options.batchBytes,
        floorBytes: Math.min(FLOOR_BYTES, this.options.batchBytes),
        ceilingBytes: 4 * this.options.windowBytes,
        now: this.options.now,
      });
      this.windows.set(key, window);
    }
    return window.join(weight);
  }

  /** The window of a source's host, if any disk has joined it. */
  windowFor(sourceUrl: string): HostWindow | undefined {
    return this.windows.get(sourceHost(sourceUrl));
  }
}

/** The host part of a source URL; a Unix socket source is local (one "host"). */
export function sourceHost(url: string): string {
  if (url.startsWith('nbd+unix:')) return 'local';
  try {
    return new URL(url).hostname.toLowerCase() || url;
  } catch {
    return url;
  }
}
