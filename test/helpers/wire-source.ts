/**
 * Both ends of the ferry wire for tests: a source in the test process (one
 * image file served over loopback by the product's WireSourceServer with the
 * `none` codec), and a destination's WireUpstream opened with the options
 * tests share, on it or on a ferry daemon's source listener.
 */
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import type { Test } from 'tap';
import { CodecPool } from '../../src/pool';
import { WireUpstream, type WireUpstreamOptions } from '../../src/upstream/wire-upstream';
import type { WireAuth } from '../../src/wire/auth';
import { CodecChooser } from '../../src/wire/codec-chooser';
import { SingleSourceExport } from '../../src/wire/source-exports';
import { SourceImage } from '../../src/wire/source-image';
import type { SourceStatus } from '../../src/wire/source-sessions';
import { WireSourceServer } from '../../src/wire/source-server';
import { tempDir } from './temp-dir';

export interface InProcessSource {
  port: number;
  /** The pool the source encodes on; a destination in the same test may share it. */
  pool: CodecPool;
  log: Logger;
  /** The source's `ferry ctl status`: its sessions and what each asked of it. */
  status(): SourceStatus;
  /** Stops the server, the pool and the image (after whatever uses the pool has closed). */
  close(): Promise<void>;
}

/** Serves `file` as export `disk.img`, its identity kept in `stateDir`. */
export async function startWireSource(
  file: string,
  stateDir: string,
  auth: WireAuth = { kind: 'insecure' },
): Promise<InProcessSource> {
  const pool = new CodecPool({ workers: 1, codec: 'none' });
  const log = pino({ level: 'silent' });
  const source = SourceImage.open({
    name: 'disk.img',
    image: file,
    writes: 'read-only',
    stateDir,
    maxSessions: 64,
    log,
  });
  const server = new WireSourceServer({
    exports: new SingleSourceExport(source),
    auth,
    pool,
    chooser: new CodecChooser('none', ['none'], 1),
    log,
  });
  const address = await server.listen('127.0.0.1', 0);
  return {
    port: Number(address.slice(address.lastIndexOf(':') + 1)),
    pool,
    log,
    status: () => source.sessions.status(),
    close: async () => {
      await server.close();
      await pool.close();
      await source.close();
    },
  };
}

/**
 * Opens a WireUpstream with one background stream and quick retries; a test
 * names its block size and attempts per block, and whatever else it needs
 * otherwise.
 */
export function openWireUpstream(
  url: string,
  auth: WireAuth,
  pool: CodecPool,
  options: Pick<WireUpstreamOptions, 'blockSize' | 'maxAttempts'> & Partial<WireUpstreamOptions>,
  log: Logger = pino({ level: 'silent' }),
): Promise<WireUpstream> {
  return WireUpstream.open(
    url,
    auth,
    pool,
    {
      backgroundStreams: 1,
      maxBatchBlocks: 64,
      connectTimeoutMs: 5000,
      minBackoffMs: 20,
      maxBackoffMs: 200,
      stallTimeoutMs: 20_000,
      ...options,
    },
    log,
  );
}

export interface InProcessSession {
  /** Holds the served image, `disk.img`, and the source's state. */
  dir: string;
  source: InProcessSource;
  upstream: WireUpstream;
}

/**
 * Serves `image` from a source in the test process and opens a WireUpstream
 * on it (insecure, blocks of `blockSize`); both close when the test ends,
 * the upstream first.
 */
export async function startWireSession(
  t: Test,
  image: Buffer,
  blockSize: number,
  dirPrefix: string,
): Promise<InProcessSession> {
  const dir = tempDir(t, dirPrefix);
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, image);
  const auth = { kind: 'insecure' } as const;
  const source = await startWireSource(file, dir, auth);
  const upstream = await openWireUpstream(
    `ferry://127.0.0.1:${source.port}/disk.img`,
    auth,
    source.pool,
    {
      blockSize,
      minBackoffMs: 10,
      maxBackoffMs: 100,
      stallTimeoutMs: 3_600_000, // a loaded machine may starve the in-process source for seconds
      maxAttempts: 3,
    },
    source.log,
  );
  t.teardown(async () => {
    await upstream.close();
    await source.close();
  });
  return { dir, source, upstream };
}
