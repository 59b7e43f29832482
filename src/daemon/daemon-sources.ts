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
 * whose image cannot be opened is reported and tried again by itself, with
 * backoff; a HELLO for it hears why it is not open. The listener's keys are
 * applied on reload where a running daemon can (a new address, new
 * credentials: for new connections), and the others are named with why.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { DaemonConfig, SourceExportSpec } from '../config/daemon-schema';
import { parseHostPort } from '../config/schema';
import { sourceWireAuth } from '../config/wire-auth';
import type { ExportRegistry } from '../nbd/export-registry';
import type { CodecPool } from '../pool';
import { Backoff } from '../util/backoff';
import { authWarnings, type WireAuth } from '../wire/auth';
import { CodecChooser } from '../wire/codec-chooser';
import { NamedSourceExports } from '../wire/source-exports';
import { SourceImage, type SourceImageStatus } from '../wire/source-image';
import { WireSourceServer, type ListenerChange, type SourceCounters } from '../wire/source-server';

type SourceSettings = DaemonConfig['source'];

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

/** A declared export whose image is not open: the last reason, and when it is tried again. */
export interface ExportNotOpen extends SourceProblem {
  writes: SourceExportSpec['writes'];
  state: 'retrying';
  /** Failed attempts in a row. */
  attempts: number;
  /** When the first of them failed. */
  since: string;
  nextAttemptAt: string;
}

export interface ServedExport extends SourceImageStatus {
  state: 'open';
}

export interface SourcesReport {
  listen: string | null;
  totals: SourceCounters | null;
  exports: ServedExport[];
  /** Declared exports that are not served, why, and when they are tried again. */
  failed: ExportNotOpen[];
  /** Exports no longer declared that are still served because they are in use. */
  removalRefused: SourceProblem[];
}

/** A config key a reload could not apply to the running daemon, and why. */
export interface KeyNotApplied {
  key: string;
  reason: string;
}

export interface SettingsApplied {
  applied: string[];
  notApplied: KeyNotApplied[];
}

interface Waiting {
  spec: SourceExportSpec;
  reason: string;
  attempts: number;
  since: string;
  nextAttemptAt: number;
  backoff: Backoff;
  timer: NodeJS.Timeout | null;
}

/** The [source] keys that choose how destinations authenticate: a change needs a new listening socket. */
const AUTH_KEYS = ['psk_file', 'cert', 'key', 'ca', 'insecure', 'allow_open_psk'] as const;

/** [source] keys a running daemon cannot take, and why. */
const RESTART_ONLY: Partial<Record<keyof SourceSettings, string>> = {
  deflate_level:
    "the codec pool's workers take their deflate level when the daemon starts (the pool is shared with every migration): restart the daemon to change it",
  state_dir:
    'the exports served keep their identity and cutover record where they were opened, and a new directory would give them new identities: restart the daemon to change it',
};

export class DaemonSources {
  private readonly table = new NamedSourceExports();
  private readonly specs = new Map<string, SourceExportSpec>();
  /** Declared exports whose image could not be opened, tried again with backoff. */
  private readonly waiting = new Map<string, Waiting>();
  private removalRefused: SourceProblem[] = [];
  private server: WireSourceServer | null = null;
  private address: string | null = null;
  /** Reloads and retries one at a time: each sees the exports the previous one left. */
  private applying: Promise<void> = Promise.resolve();
  /** The [source] keys in effect (a key a reload could not apply keeps its old value here). */
  private settings: SourceSettings;
  private readonly stateDir: string;
  private closed = false;

  /** Builds the listener when source.listen is set (its credentials are read now: a bad one stops the start). */
  constructor(
    config: DaemonConfig,
    private readonly options: DaemonSourcesOptions,
  ) {
    this.settings = config.source;
    this.stateDir = config.source.state_dir ?? path.join(config.daemon.state_dir, 'source');
    if (config.source.listen) this.server = this.makeServer(this.settings, sourceWireAuth(this.settings));
  }

  private get log(): Logger {
    return this.options.log;
  }

  private makeServer(s: SourceSettings, auth: WireAuth): WireSourceServer {
    const log = this.log.child({ component: 'source' });
    for (const warning of authWarnings(auth)) log.warn(warning);
    return new WireSourceServer({
      exports: this.table,
      auth,
      pool: this.options.pool,
      chooser: this.chooser(s),
      log: log.child({ component: 'wire' }),
      handshakeTimeoutMs: s.handshake_timeout_ms,
      maxConnections: s.max_connections,
      maxConnectionsKey: 'source.max_connections',
    });
  }

  private chooser(s: SourceSettings): CodecChooser {
    return new CodecChooser(s.codec, ['none', 'lz4', 'deflate'], this.options.pool.workers);
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
    return this.serialized(() => this.applyNow(declared));
  }

  /**
   * Takes the [source] keys of a reloaded config that a running daemon can
   * take — a new listen address (bound before the old one is let go), new
   * credentials and handshake timeout (for new connections: those open stay
   * as they are until they end), the connection cap, the codec choice and
   * the retry delays — and names each key it could not apply, with why.
   */
  reconfigure(next: SourceSettings): Promise<SettingsApplied> {
    return this.serialized(() => this.reconfigureNow(next));
  }

  private serialized<T>(work: () => Promise<T>): Promise<T> {
    const run = this.applying.catch(() => undefined).then(work);
    this.applying = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
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
    for (const [name, w] of this.waiting) {
      const next = wanted.get(name);
      if (!next || next.image !== w.spec.image || next.writes !== w.spec.writes) this.stopWaiting(name);
    }
    // A reload is an explicit ask: every export not open is tried now, its delays start over.
    for (const w of this.waiting.values()) w.backoff = this.backoff();
    for (const spec of declared) if (!this.specs.has(spec.name)) this.tryOpen(spec);
    this.removalRefused = refused;
    for (const r of refused)
      this.log.warn(
        { export: r.export, reason: r.reason },
        'source export not removed: it is in use (the next reload tries again)',
      );
  }

  private backoff(): Backoff {
    return new Backoff({ minMs: this.settings.open_retry_min_ms, maxMs: this.settings.open_retry_max_ms });
  }

  /** Opens a declared export, or keeps it waiting: logged when its reason changes, not at every attempt. */
  private tryOpen(spec: SourceExportSpec): void {
    const problem = this.add(spec);
    const w = this.waiting.get(spec.name);
    if (problem === null) {
      if (w) {
        this.log.info({ export: spec.name, attempts: w.attempts, since: w.since }, 'source export open after retrying');
        this.stopWaiting(spec.name);
      }
      return;
    }
    const entry: Waiting = w ?? {
      spec,
      reason: '',
      attempts: 0,
      since: new Date().toISOString(),
      nextAttemptAt: 0,
      backoff: this.backoff(),
      timer: null,
    };
    this.waiting.set(spec.name, entry);
    entry.attempts++;
    const delay = entry.backoff.next();
    entry.nextAttemptAt = Date.now() + delay;
    const fields = { export: spec.name, image: spec.image, err: problem, attempts: entry.attempts, retryInMs: delay };
    if (problem !== entry.reason) this.log.error(fields, 'cannot source: the export is not open; trying again');
    else this.log.debug(fields, 'cannot source yet');
    entry.reason = problem;
    this.table.setNotOpen(spec.name, problem);
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = null;
      void this.serialized(async () => {
        if (this.closed || this.waiting.get(spec.name) !== entry) return;
        this.tryOpen(entry.spec);
      });
    }, delay);
    entry.timer.unref();
  }

  private stopWaiting(name: string): void {
    const w = this.waiting.get(name);
    if (w?.timer) clearTimeout(w.timer);
    this.waiting.delete(name);
    this.table.setNotOpen(name, null);
  }

  private async reconfigureNow(next: SourceSettings): Promise<SettingsApplied> {
    const old = this.settings;
    const changed = (Object.keys(next) as Array<keyof SourceSettings>).filter(
      (k) => k !== 'export' && JSON.stringify(next[k]) !== JSON.stringify(old[k]),
    );
    const result: SettingsApplied = { applied: [], notApplied: [] };
    const settings: Record<string, unknown> = { ...old };
    const take = (keys: Array<keyof SourceSettings>): void => {
      for (const k of keys) {
        settings[k] = next[k];
        result.applied.push(`source.${k}`);
      }
    };
    const refuse = (keys: Array<keyof SourceSettings>, reason: string): void => {
      for (const k of keys) result.notApplied.push({ key: `source.${k}`, reason });
    };
    for (const k of changed) {
      const why = RESTART_ONLY[k];
      if (why) refuse([k], why);
    }
    take(changed.filter((k) => k === 'open_retry_min_ms' || k === 'open_retry_max_ms'));
    const listenerKeys = changed.filter(
      (k) => !RESTART_ONLY[k] && k !== 'open_retry_min_ms' && k !== 'open_retry_max_ms',
    );
    try {
      await this.applyListener(next, listenerKeys, take, refuse);
    } finally {
      this.settings = settings as SourceSettings;
    }
    if (result.applied.length) this.log.info({ keys: result.applied }, 'source settings applied');
    for (const n of result.notApplied) this.log.warn({ key: n.key, reason: n.reason }, 'config key not applied');
    return result;
  }

  /**
   * The credential keys whose files were rewritten in place (a key rotated
   * under the same path): the config does not change, the listener must.
   */
  private rewrittenCredentials(
    next: SourceSettings,
    changed: Array<keyof SourceSettings>,
  ): Array<keyof SourceSettings> {
    if (!this.address || !next.listen || changed.some((k) => (AUTH_KEYS as readonly string[]).includes(k))) return [];
    let now: WireAuth;
    try {
      now = sourceWireAuth(next);
    } catch {
      return next.psk_file ? ['psk_file'] : next.cert ? ['cert', 'key', 'ca'] : []; // unreadable now: reported as not applied
    }
    return sameCredentials(now, this.server!.credentials)
      ? []
      : now.kind === 'psk'
        ? ['psk_file']
        : ['cert', 'key', 'ca'];
  }

  private async applyListener(
    next: SourceSettings,
    changed: Array<keyof SourceSettings>,
    take: (keys: Array<keyof SourceSettings>) => void,
    refuse: (keys: Array<keyof SourceSettings>, reason: string) => void,
  ): Promise<void> {
    let keys = [...changed, ...this.rewrittenCredentials(next, changed)];
    if (keys.length === 0) return;
    if (!next.listen) {
      // No listener wanted: new connections are refused; those open go on until they end.
      if (this.address) {
        this.server!.stopListening();
        this.log.warn({ was: this.address }, 'source listener closed: source.listen is no longer set');
        this.address = null;
      }
      take(keys);
      return;
    }
    const authKeys = keys.filter((k) => (AUTH_KEYS as readonly string[]).includes(k));
    let auth: WireAuth | undefined;
    if (authKeys.length > 0 || !this.server)
      try {
        auth = sourceWireAuth(next);
      } catch (e) {
        const why = (e as Error).message;
        if (!this.server) return refuse(keys, `${why}: the source listener is not started`);
        refuse(authKeys, `${why}; new connections are still authenticated with the old settings`);
        keys = keys.filter((k) => !authKeys.includes(k));
        auth = undefined;
      }
    const change: ListenerChange = {
      auth,
      handshakeTimeoutMs: next.handshake_timeout_ms,
      maxConnections: next.max_connections,
      chooser: keys.includes('codec') ? this.chooser(next) : undefined,
    };
    const at = parseHostPort(next.listen);
    if (!this.server) this.server = this.makeServer(next, auth!);
    else if (auth) for (const warning of authWarnings(auth)) this.log.warn({ component: 'source' }, warning);
    if (!this.address) {
      // A listener that was not running: source.listen set by this reload (or set again).
      try {
        this.address = await this.server.listen(at.host, at.port, change);
      } catch (e) {
        return refuse(keys, `cannot listen on ${next.listen}: ${(e as Error).message}`);
      }
      take(keys);
      this.log.info({ address: this.address }, 'source listener started');
      return;
    }
    const rebindKeys = keys.filter(
      (k) => k === 'listen' || k === 'handshake_timeout_ms' || (AUTH_KEYS as readonly string[]).includes(k),
    );
    if (rebindKeys.length > 0) {
      const was = this.address;
      try {
        this.address = await this.server.rebind(keys.includes('listen') ? at : null, change);
        take(rebindKeys);
        this.log.info(
          { address: this.address, was, keys: rebindKeys.map((k) => `source.${k}`) },
          'source listener replaced: new connections arrive on it; those open stay until they end',
        );
      } catch (e) {
        const left = this.server.isListening
          ? `the listener stays at ${was} as it was`
          : 'no listener now (the next reload tries again)';
        if (!this.server.isListening) this.address = null;
        refuse(rebindKeys, `cannot listen on ${next.listen}: ${(e as Error).message}; ${left}`);
      }
    }
    const adjustKeys = keys.filter((k) => k === 'max_connections' || k === 'codec');
    if (adjustKeys.length > 0) {
      this.server.adjust(change);
      take(adjustKeys);
    }
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
    if (image) return image;
    const w = this.waiting.get(name);
    if (w)
      throw new Error(`source export "${name}" is not open: ${w.reason} (tried ${w.attempts} time(s); trying again)`);
    throw new Error(`no source export named "${name}"`);
  }

  /**
   * A source-initiated cutover of a tracked export: fences its VM's writes,
   * records and sends every destination session its final write set (now, or
   * at its next connection). Asking again gives the same sets.
   */
  async cutover(name: string): Promise<SourceImageStatus> {
    const image = this.find(name);
    if (image.writes !== 'tracked' && !image.sessions.tracking)
      throw new Error(
        `source export "${name}" is read-only: nothing here writes its image, so there is nothing to fence and no write set; ` +
          'its destinations cut over by themselves (cutover NAME there, or cutover = "at-start")',
      );
    await image.sessions.cutover();
    return image.status();
  }

  report(): SourcesReport {
    return {
      listen: this.address,
      totals: this.server ? { ...this.server.counters } : null,
      exports: this.table.list().map((i) => ({ ...i.status(), state: 'open' as const })),
      failed: [...this.waiting.values()].map((w) => ({
        export: w.spec.name,
        image: w.spec.image,
        writes: w.spec.writes,
        state: 'retrying' as const,
        reason: w.reason,
        attempts: w.attempts,
        since: w.since,
        nextAttemptAt: new Date(w.nextAttemptAt).toISOString(),
      })),
      removalRefused: this.removalRefused,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const name of [...this.waiting.keys()]) this.stopWaiting(name);
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
    if (!this.server) return 'the source listener is not running (source.listen is not set)';
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
        // As `ferry source`: every session has a connection when it is made, so live ones never exceed the cap.
        maxSessions: this.settings.max_connections,
        log: this.options.log.child({ export: spec.name }),
      });
    } catch (e) {
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

function sameCredentials(a: WireAuth, b: WireAuth): boolean {
  if (a.kind === 'psk' && b.kind === 'psk') return a.key.equals(b.key);
  if (a.kind === 'cert' && b.kind === 'cert') return a.cert.equals(b.cert) && a.key.equals(b.key) && a.ca.equals(b.ca);
  return a.kind === b.kind;
}
