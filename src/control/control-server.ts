/**
 * The control socket of a migrating destination (or of a source): a Unix
 * socket, owner-only, that answers one JSON line per request line (see protocol.ts).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { MigrationControl } from '../migrate/status';
import { LineSplitter } from './line-splitter';
import { groupId } from './group';
import { processDiagnostics } from './diagnostics';
import {
  MAX_LINE_BYTES,
  formatResponseLine,
  parseRequestLine,
  type ControlRequest,
  type ControlResponse,
  type ParsedRequest,
} from './protocol';

export interface ControlLimits {
  /** Operators and scrapers, not crowds: beyond this many connections new ones are refused. */
  maxConnections: number;
  /** A connection that sends nothing for this long is closed, so forgotten clients do not pile up. */
  idleTimeoutMs: number;
}

export const DEFAULT_CONTROL_LIMITS: ControlLimits = { maxConnections: 32, idleTimeoutMs: 5 * 60 * 1000 };

/** The control keys of a config section ([dest], [source], [daemon]) as limits. */
export function controlLimits(section: {
  control_max_connections: number;
  control_idle_timeout_ms: number;
}): ControlLimits {
  return { maxConnections: section.control_max_connections, idleTimeoutMs: section.control_idle_timeout_ms };
}

/** Runs one request and returns the daemon's status after it; throws to refuse. */
export type ControlDispatch<R = ControlRequest> = (request: R) => Promise<object>;

/** Parses one request line (a ferry dest's verbs by default, `ferry daemon` brings its own). */
export type RequestParser<R> = (line: string) => ParsedRequest<R>;

export class ControlServer<R extends { cmd: string } = ControlRequest> {
  private server: net.Server | null = null;
  private socketPath: string | null = null;
  private readonly connections = new Set<net.Socket>();
  private readonly dispatch: ControlDispatch<R>;

  /** Serves a migration's controls, or any daemon's given as a dispatch function. */
  constructor(
    control: MigrationControl | ControlDispatch<R>,
    private readonly log: Logger,
    private readonly parse: RequestParser<R> = parseRequestLine as unknown as RequestParser<R>,
    private readonly limits: ControlLimits = DEFAULT_CONTROL_LIMITS,
  ) {
    this.dispatch =
      typeof control === 'function' ? control : (migrationDispatch(control) as unknown as ControlDispatch<R>);
  }

  /**
   * Listens on `socketPath`, replacing a stale socket file left by a dead
   * process. Owner-only (0600), or 0660 owned by `group` when one is named.
   */
  async listen(socketPath: string, group?: string): Promise<void> {
    if (this.server) throw new Error(`control socket: already listening on ${this.socketPath}`);
    const gid = group === undefined ? null : groupId(group);
    await removeStaleSocket(socketPath);
    const server = net.createServer((socket) => this.accept(socket));
    server.maxConnections = this.limits.maxConnections;
    // The socket can pause, detach and redirect the migration: only its owner (and the group
    // named) may use it. It is made in a private (0700) directory, given its group and mode
    // there, and only then renamed into place, so it never exists at its path with a wider
    // mode or another group, whatever the umask.
    // Named for the socket and this process, so that a start killed here leaves a directory the
    // next start recognises as stale (its process is gone) and removes.
    const prefix = stagingPrefix(socketPath);
    removeStaleStaging(path.dirname(socketPath), prefix);
    const privateDir = fs.mkdtempSync(path.join(path.dirname(socketPath), `${prefix}${process.pid}-`));
    const staging = path.join(privateDir, 'control.sock');
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(staging, () => {
          server.off('error', reject);
          resolve();
        });
      });
      fs.chmodSync(staging, 0o600);
      if (gid !== null) {
        fs.chownSync(staging, -1, gid);
        fs.chmodSync(staging, 0o660);
      }
      fs.renameSync(staging, socketPath);
    } catch (e) {
      server.close();
      throw e;
    } finally {
      fs.rmSync(privateDir, { recursive: true, force: true });
    }
    server.on('error', (err) => this.log.error({ err, socketPath }, 'control socket error'));
    this.server = server;
    this.socketPath = socketPath;
    this.log.info({ socketPath }, 'control socket listening');
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    for (const socket of this.connections) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.socketPath) fs.rmSync(this.socketPath, { force: true });
  }

  /** Runs one request against the control; never throws. */
  async handle(request: R): Promise<ControlResponse> {
    const quiet = request.cmd === 'status' || request.cmd === 'list';
    try {
      let status = await this.dispatch(request);
      if (!quiet) this.log.info({ request: loggable(request) }, 'control command done');
      // What the process holds open, beside the status: how a leak of timers or sockets is seen.
      if (request.cmd === 'status') status = { ...status, diagnostics: processDiagnostics() };
      return { ok: true, status } as ControlResponse;
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      if (!quiet) this.log.warn({ request: loggable(request), error }, 'control command refused');
      return { ok: false, error };
    }
  }

  private accept(socket: net.Socket): void {
    this.connections.add(socket);
    this.log.info({ socketPath: this.socketPath }, 'control client connected');
    const splitter = new LineSplitter(MAX_LINE_BYTES);
    socket.on('close', () => this.connections.delete(socket));
    socket.on('error', (err) => this.log.debug({ err }, 'control connection error'));
    socket.setTimeout(this.limits.idleTimeoutMs, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => {
      // One chunk's requests at a time, answered in order; reading waits meanwhile.
      socket.pause();
      void this.answer(socket, splitter.push(chunk)).finally(() => {
        if (!socket.destroyed) socket.resume();
      });
    });
  }

  private async answer(socket: net.Socket, lines: ReturnType<LineSplitter['push']>): Promise<void> {
    for (const item of lines) {
      let response: ControlResponse;
      if ('tooLong' in item) {
        response = { ok: false, error: `request line is longer than ${MAX_LINE_BYTES} bytes` };
      } else {
        const parsed = this.parse(item.line);
        response = parsed.ok ? await this.handle(parsed.request) : parsed;
      }
      if (socket.destroyed || !socket.writable) return;
      socket.write(formatResponseLine(response));
    }
  }
}

function migrationDispatch(control: MigrationControl): ControlDispatch {
  return async (request) => {
    switch (request.cmd) {
      case 'status':
        break;
      case 'pause':
        control.pause();
        break;
      case 'resume':
        control.resume();
        break;
      case 'rate':
        control.setRateLimit(request.bytesPerSecond);
        break;
      case 'detach':
        await control.detach();
        break;
      case 'reconnect':
        await control.reconnect(request.url);
        break;
      case 'cutover':
        await control.cutover();
        break;
      case 'abort':
        await control.abort();
        break;
      default:
        throw new Error(`ferry dest does not take "${request.cmd}"`);
    }
    return control.status();
  };
}

/** A reconnect URL may carry credentials; logs get only its scheme and host. */
function loggable<R extends { cmd: string }>(request: R): R | ControlRequest {
  if (request.cmd !== 'reconnect' || !('url' in request) || typeof request.url !== 'string') return request;
  let url: string;
  try {
    const parsed = new URL(request.url);
    url = `${parsed.protocol}//${parsed.host}/...`;
  } catch {
    url = '(unparsable url)';
  }
  return { cmd: 'reconnect', url };
}

/**
 * Removes a socket file nobody listens on. Refuses to touch a file that is not a
 * socket, or a socket another process still answers on.
 */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket())
    throw new Error(`control socket: ${socketPath} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`control socket: ${socketPath} is in use by a running process`);
  fs.rmSync(socketPath, { force: true });
}

/** The private directories a control socket is made in: `.NAME.staging-PID-RANDOM` beside it. */
function stagingPrefix(socketPath: string): string {
  return `.${path.basename(socketPath)}.staging-`;
}

/** Removes this socket's staging directories whose process is gone (a start killed while listening). */
export function removeStaleStaging(dir: string, prefix: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => n.startsWith(prefix));
  } catch {
    return; // the listen that follows names the problem with the directory
  }
  for (const name of names) {
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || processAlive(pid)) continue;
    const full = path.join(dir, name);
    const stat = fs.lstatSync(full, { throwIfNoEntry: false });
    // Only directories this user made: another user's names are not ours to remove.
    if (stat?.isDirectory() && stat.uid === process.getuid?.()) fs.rmSync(full, { recursive: true, force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
