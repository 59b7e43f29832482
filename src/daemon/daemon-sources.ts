/**
 * The images `ferry daemon` sources: one ferry-wire listener for all of
 * them (the machinery of `ferry source`, serving many images by export
 * name) on the daemon's one codec pool, and, for an image whose VM still
 * runs here, its NBD export on the daemon's NBD listener with every write
 * tracked.
 *
 * Exports come and go with the config (start, SIGHUP, `ferry ctl reload`).
 * An export still in use — a destination connected over the wire, or a VM
 * over NBD — is not removed: the removal is refused with the reason, the
 * export goes on being served, and the next reload tries again. An export
 * whose image cannot be opened is reported and tried again at each reload.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { DaemonConfig, SourceExportSpec } from '../config/daemon-schema';
import { sourceWireAuth } from '../config/wire-auth';
import type { ExportRegistry } from '../nbd/export-registry';
import type { CodecPool } from '../pool';
import { authWarnings } from '../wire/auth';
import { CodecChooser } from '../wire/codec-chooser';
import { NamedSourceExports } from '../wire/source-exports';
import { SourceImage, type SourceImageStatus } from '../wire/source-image';
import { WireSourceServer, type SourceCounters } from '../wire/source-server';

export interface DaemonSourcesOptions {
  pool: CodecPool;
  /** The daemon's NBD exports: a tracked image is served there to its VM. */
  nbdExports: ExportRegistry;
  /** NBD clients in transmission on an export now. */
  nbdClients: (name: string) => number;
  /** Why an image or export name is already the daemon's as a destination, or null. */
  destinationClaim: (image: string, exportName: string) => string | null;
  log: Logger;
}

export interface SourceProblem {
  export: string;
  image: string;
  reason: string;
}

export interface SourcesReport {
  listen: string | null;
  totals: SourceCounters | null;
  exports: SourceImageStatus[];
  /** Declared exports that are not served, and why. */
  failed: SourceProblem[];
  /** Exports no longer declared that are still served because they are in use. */
  removalRefused: SourceProblem[];
}

export class DaemonSources {
  private readonly table = new NamedSourceExports();
  private readonly specs = new Map<string, SourceExportSpec>();
  private failed: SourceProblem[] = [];
  private removalRefused: SourceProblem[] = [];
  private readonly server: WireSourceServer | null = null;
  private address: string | null = null;
  /** Reloads one at a time: each sees the exports the previous one left. */
  private applying: Promise<void> = Promise.resolve();
  private readonly stateDir: string;
  private readonly maxSessions: number;

  /** Builds the listener when source.listen is set (its credentials are read now: a bad one stops the start). */
  constructor(
    config: DaemonConfig,
    private readonly options: DaemonSourcesOptions,
  ) {
    const s = config.source;
    this.stateDir = s.state_dir ?? path.join(config.daemon.state_dir, 'source');
    // As `ferry source`: every session has a connection when it is made, so live ones never exceed the cap.
    this.maxSessions = s.max_connections;
    if (!s.listen) return;
    const auth = sourceWireAuth(s);
    const log = options.log.child({ component: 'source' });
    for (const warning of authWarnings(auth)) log.warn(warning);
    this.server = new WireSourceServer({
      exports: this.table,
      auth,
      pool: options.pool,
      chooser: new CodecChooser(s.codec, ['none', 'lz4', 'deflate'], options.pool.workers),
      log: log.child({ component: 'wire' }),
      handshakeTimeoutMs: s.handshake_timeout_ms,
      maxConnections: s.max_connections,
      maxConnectionsKey: 'source.max_connections',
    });
  }

  get listening(): boolean {
    return this.server !== null;
  }

  async listen(host: string, port: number): Promise<string> {
    this.address = await this.server!.listen(host, port);
    return this.address;
  }

  /** Serves exactly `declared`, as far as exports in use allow; says what it could not do. */
  apply(declared: SourceExportSpec[]): Promise<void> {
    this.applying = this.applying.catch(() => undefined).then(() => this.applyNow(declared));
    return this.applying;
  }

  private async applyNow(declared: SourceExportSpec[]): Promise<void> {
    const wanted = new Map(declared.map((e) => [e.name, e]));
    const refused: SourceProblem[] = [];
    for (const [name, spec] of this.specs) {
      const next = wanted.get(name);
      if (next && next.image === spec.image && next.writes === spec.writes) continue;
      const busy = this.busy(name);
      if (busy) {
        refused.push({ export: name, image: spec.image, reason: busy });
        continue;
      }
      await this.remove(name, next ? 'its image or writes changed' : 'no longer declared');
    }
    const failed: SourceProblem[] = [];
    for (const spec of declared) {
      if (this.specs.has(spec.name)) continue;
      const problem = this.add(spec);
      if (problem) failed.push({ export: spec.name, image: spec.image, reason: problem });
    }
    this.failed = failed;
    this.removalRefused = refused;
    for (const r of refused)
      this.options.log.warn(
        { export: r.export, reason: r.reason },
        'source export not removed: it is in use (the next reload tries again)',
      );
  }

  /** Why a migration may not take this image or export name, or null. */
  claim(image: string, exportName: string): string | null {
    const resolved = path.resolve(image);
    for (const spec of this.specs.values()) {
      if (path.resolve(spec.image) === resolved) return `image ${image} is source export ${spec.name}`;
      if (spec.name === exportName) return `export ${exportName} is a source export`;
    }
    return null;
  }

  find(name: string): SourceImage {
    const image = this.table.get(name);
    if (!image) throw new Error(`no source export named "${name}"`);
    return image;
  }

  report(): SourcesReport {
    return {
      listen: this.address,
      totals: this.server ? { ...this.server.counters } : null,
      exports: this.table.list().map((i) => i.status()),
      failed: this.failed,
      removalRefused: this.removalRefused,
    };
  }

  async close(): Promise<void> {
    await this.server?.close();
    for (const image of this.table.list()) {
      this.options.nbdExports.remove(image.name);
      await image.close().catch((e: Error) => this.options.log.error({ export: image.name, err: e.message }, 'close'));
    }
  }

  private busy(name: string): string | null {
    const image = this.table.get(name);
    if (!image) return null;
    const wire = image.wireConnections;
    const nbd = this.options.nbdClients(name);
    if (wire === 0 && nbd === 0) return null;
    const parts = [wire ? `${wire} destination connection(s)` : '', nbd ? `${nbd} NBD client(s) (its VM)` : ''];
    return `in use by ${parts.filter(Boolean).join(' and ')}; stop them (or let the migration finish) and reload again`;
  }

  private add(spec: SourceExportSpec): string | null {
    if (!this.server) return 'the source listener is not running (source.listen was not set when the daemon started)';
    const claimed = this.options.destinationClaim(spec.image, spec.name);
    if (claimed) return claimed;
    if (spec.writes === 'tracked' && this.options.nbdExports.has(spec.name))
      return `NBD export "${spec.name}" is served already`;
    let image: SourceImage;
    try {
      fs.mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
      image = SourceImage.open({
        name: spec.name,
        image: spec.image,
        writes: spec.writes,
        stateDir: this.stateDir,
        maxSessions: this.maxSessions,
        log: this.options.log.child({ export: spec.name }),
      });
    } catch (e) {
      this.options.log.error({ export: spec.name, image: spec.image, err: (e as Error).message }, 'cannot source');
      return (e as Error).message;
    }
    this.table.add(image);
    if (image.vmDevice)
      this.options.nbdExports.add({ name: spec.name, description: `source ${spec.image}`, device: image.vmDevice });
    this.specs.set(spec.name, spec);
    this.options.log.info(
      {
        export: spec.name,
        image: spec.image,
        writes: spec.writes,
        identity: image.identity,
        fenced: image.sessions.fenced,
      },
      'sourcing',
    );
    return null;
  }

  /** New HELLOs and NBD clients stop finding it at once; the image is flushed and unlocked before this resolves. */
  private async remove(name: string, why: string): Promise<void> {
    const image = this.table.get(name);
    this.specs.delete(name);
    this.table.remove(name);
    if (!image) return;
    if (image.vmDevice) this.options.nbdExports.remove(name);
    this.options.log.info({ export: name, why }, 'source export removed');
    await image.close().catch((e: Error) => this.options.log.error({ export: name, err: e.message }, 'close'));
  }
}
