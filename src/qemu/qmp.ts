/**
 * A QMP client on a Unix socket: reads the greeting, negotiates capabilities,
 * runs commands (each with its own id, answered in any order) and emits QEMU's
 * asynchronous events as 'event' (QmpEvent). One client, one connection.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { encodeCommand, QmpDecoder, QmpProtocolError, type QmpMessage, type QmpVersion } from './qmp-protocol';

export interface QmpEvent {
  name: string;
  data: Record<string, unknown>;
  /** QEMU's timestamp of the event, in milliseconds since the epoch. */
  timestamp: number;
}

/** QEMU answered a command with an error. */
export class QmpCommandError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QEMU refused ${command}: ${desc} (${errorClass})`);
    this.name = 'QmpCommandError';
  }
}

/** The QMP connection could not be made or went away; QEMU never answered. */
export class QmpConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QmpConnectionError';
  }
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | null;
}

function connectError(socketPath: string, err: NodeJS.ErrnoException): QmpConnectionError {
  switch (err.code) {
    case 'ENOENT':
      return new QmpConnectionError(
        `no QMP socket at ${socketPath} (ENOENT): is QEMU running with -qmp unix:${socketPath},server=on?`,
      );
    case 'ECONNREFUSED':
      return new QmpConnectionError(
        `nothing listens on QMP socket ${socketPath} (ECONNREFUSED: QEMU is gone or the file is stale)`,
      );
    case 'EACCES':
      return new QmpConnectionError(
        `permission denied on QMP socket ${socketPath} (EACCES): run as the user that started QEMU`,
      );
    default:
      return new QmpConnectionError(`QMP socket ${socketPath}: ${err.message}`);
  }
}

export class QmpClient extends EventEmitter {
  private readonly decoder = new QmpDecoder();
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private closedError: Error | null = null;
  private greeted: ((version: QmpVersion) => void) | null = null;

  private constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
  ) {
    super();
  }

  /**
   * Connects, waits for the greeting and leaves capabilities negotiation mode.
   * Rejects with QmpConnectionError if the socket refuses, or QEMU does not greet
   * within timeoutMs of the connection (QEMU greets one client per socket at a time).
   */
  static connect(socketPath: string, timeoutMs = 10_000): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      const client = new QmpClient(socket, socketPath);
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      socket.once('connect', () => {
        timer = setTimeout(
          () =>
            fail(
              new QmpConnectionError(
                `QEMU did not greet on ${socketPath} within ${timeoutMs} ms (is another client connected?)`,
              ),
            ),
          timeoutMs,
        );
      });
      socket.once('error', (err: NodeJS.ErrnoException) => fail(connectError(socketPath, err)));
      client.greeted = (version) => {
        client
          .execute('qmp_capabilities', undefined, timeoutMs)
          .then(() => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            client.version = version;
            resolve(client);
          })
          .catch(fail);
      };
      client.attach(fail);
    });
  }

  /** QEMU's version from the greeting. */
  version: QmpVersion = { major: 0, minor: 0, micro: 0, package: '' };

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Runs one command; resolves with its `return` value, rejects with QmpCommandError or QmpConnectionError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `ferry-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer =
        timeoutMs === undefined
          ? null
          : setTimeout(() => {
              this.pending.delete(id);
              reject(new QmpConnectionError(`QEMU did not answer ${command} within ${timeoutMs} ms`));
            }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(encodeCommand(command, args, id));
    });
  }

  close(): void {
    this.shutdown(new QmpConnectionError(`QMP connection to ${this.socketPath} closed`));
  }

  private attach(failConnect: (err: Error) => void): void {
    this.socket.on('data', (chunk: Buffer) => {
      let messages: QmpMessage[];
      try {
        messages = this.decoder.push(chunk);
      } catch (err) {
        const e = err as QmpProtocolError;
        failConnect(e);
        return this.shutdown(e);
      }
      for (const m of messages) this.dispatch(m);
    });
    let connected = false;
    this.socket.once('connect', () => (connected = true));
    this.socket.on('error', (err: NodeJS.ErrnoException) =>
      this.shutdown(
        connected
          ? new QmpConnectionError(`lost the QMP connection on ${this.socketPath}: ${err.message} (did QEMU exit?)`)
          : connectError(this.socketPath, err),
      ),
    );
    this.socket.on('close', () => {
      const err = new QmpConnectionError(`QEMU closed the QMP connection on ${this.socketPath}`);
      failConnect(err);
      this.shutdown(err);
    });
  }

  private dispatch(m: QmpMessage): void {
    switch (m.kind) {
      case 'greeting': {
        const greeted = this.greeted;
        this.greeted = null;
        greeted?.(m.version);
        return;
      }
      case 'event':
        this.emit('event', { name: m.name, data: m.data, timestamp: m.timestamp } satisfies QmpEvent);
        return;
      case 'return':
      case 'error': {
        const id = typeof m.id === 'string' ? m.id : '';
        const p = this.pending.get(id);
        // An answer to nothing we asked (or asked and gave up on): nothing waits for it.
        if (!p) return;
        this.pending.delete(id);
        if (p.timer) clearTimeout(p.timer);
        if (m.kind === 'return') p.resolve(m.value);
        else p.reject(new QmpCommandError(p.command, m.errorClass, m.desc));
        return;
      }
    }
  }

  private shutdown(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    this.socket.destroy();
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.emit('close', err);
  }
}
