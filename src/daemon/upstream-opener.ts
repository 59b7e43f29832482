/**
 * Opens a disk's upstream for the daemon: the ferry wire (decoded in the
 * host's one codec pool) or plain NBD, with the daemon's reconnect settings.
 */
import type { Logger } from 'pino';
import type { DaemonConfig } from '../config/daemon-schema';
import type { CodecPool } from '../pool';
import { NbdUpstream } from '../upstream/nbd-upstream';
import type { Upstream } from '../upstream/upstream';
import { WireUpstream } from '../upstream/wire-upstream';
import { authWarnings, type WireAuth } from '../wire/auth';
import { destWireAuth } from '../config/wire-auth';

export class SourceUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SourceUrlError';
  }
}

export interface DiskUpstreamOptions {
  url: string;
  blockSize: number;
  session: string;
  dirtyBitmap?: string;
}

export class UpstreamOpener {
  private auth: WireAuth | null = null;

  constructor(
    private readonly config: DaemonConfig,
    private readonly pool: CodecPool,
    private readonly log: Logger,
  ) {}

  /** The wire's credentials, read once (a bad key file fails the first ferry:// disk, with the reason). */
  private wireAuth(): WireAuth {
    if (this.auth) return this.auth;
    const auth = destWireAuth(this.config.wire);
    for (const warning of authWarnings(auth)) this.log.warn(warning);
    this.auth = auth;
    return auth;
  }

  async open(disk: DiskUpstreamOptions, log: Logger): Promise<Upstream> {
    const { url } = disk;
    const d = this.config.daemon;
    if (url.startsWith('ferry://')) {
      if (disk.dirtyBitmap)
        throw new SourceUrlError(
          `dirty_bitmap is for a plain NBD source; ferry source ${url} reports its writes itself`,
        );
      return WireUpstream.open(
        url,
        this.wireAuth(),
        this.pool,
        {
          blockSize: disk.blockSize,
          backgroundStreams: this.config.wire.background_streams,
          maxBatchBlocks: this.config.copy.batch_blocks,
          connectTimeoutMs: 10_000,
          minBackoffMs: d.reconnect_min_ms,
          maxBackoffMs: d.reconnect_max_ms,
          stallTimeoutMs: d.wire_stall_timeout_ms,
          maxAttempts: this.config.wire.max_attempts,
          session: disk.session,
        },
        log.child({ upstream: 'ferry' }),
      );
    }
    if (url.startsWith('nbd://') || url.startsWith('nbd+unix://'))
      return NbdUpstream.open(url, log.child({ upstream: 'nbd' }), {
        minBackoffMs: d.reconnect_min_ms,
        maxBackoffMs: d.reconnect_max_ms,
        stallTimeoutMs: d.nbd_stall_timeout_ms,
        connectTimeoutMs: 10_000,
        dirtyBitmap: disk.dirtyBitmap,
      });
    throw new SourceUrlError(
      `unsupported source URL "${url}" (use ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)`,
    );
  }
}
