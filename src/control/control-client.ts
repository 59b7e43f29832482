/** One request to a ferry dest's control socket, one response back. */
import net from 'node:net';
import { LineSplitter } from './line-splitter';
import {
  MAX_LINE_BYTES,
  formatRequestLine,
  parseResponseLine,
  type ControlRequest,
  type ControlResponse,
} from './protocol';

/** The control socket could not be reached or did not answer; the daemon never said yes or no. */
export class ControlUnreachableError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'ControlUnreachableError';
  }
}

function connectError(socketPath: string, err: NodeJS.ErrnoException): ControlUnreachableError {
  switch (err.code) {
    case 'ENOENT':
      return new ControlUnreachableError(`no ferry dest is listening on ${socketPath} (ENOENT)`, err.code);
    case 'ECONNREFUSED':
      return new ControlUnreachableError(
        `no ferry dest is listening on ${socketPath} (ECONNREFUSED: stale socket file)`,
        err.code,
      );
    case 'EACCES':
      return new ControlUnreachableError(
        `permission denied on control socket ${socketPath} (EACCES): run as the user that started ferry dest`,
        err.code,
      );
    default:
      return new ControlUnreachableError(`control socket ${socketPath}: ${err.message}`, err.code);
  }
}

export function sendControl(socketPath: string, request: ControlRequest, timeoutMs: number): Promise<ControlResponse>;
/** A request of another verb set (`ferry daemon`'s), with its own response parser. */
export function sendControl<Q extends { cmd: string }, A>(
  socketPath: string,
  request: Q,
  timeoutMs: number,
  parse: (line: string) => A,
): Promise<A>;
export function sendControl(
  socketPath: string,
  request: { cmd: string },
  timeoutMs: number,
  parse: (line: string) => unknown = parseResponseLine,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    const splitter = new LineSplitter(MAX_LINE_BYTES);
    let settled = false;
    const finish = (err: Error | null, response?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(response!);
    };
    const timer = setTimeout(
      () =>
        finish(
          new ControlUnreachableError(`ferry dest on ${socketPath} did not answer within ${timeoutMs} ms`, 'ETIMEDOUT'),
        ),
      timeoutMs,
    );
    socket.once('connect', () => socket.write(formatRequestLine(request as ControlRequest)));
    socket.on('error', (err: NodeJS.ErrnoException) => finish(connectError(socketPath, err)));
    socket.on('data', (chunk: Buffer) => {
      for (const item of splitter.push(chunk)) {
        if ('tooLong' in item) return finish(new Error(`control response from ${socketPath} is too long`));
        try {
          return finish(null, parse(item.line));
        } catch (err) {
          return finish(err as Error);
        }
      }
    });
    socket.on('close', () =>
      finish(new ControlUnreachableError(`ferry dest on ${socketPath} closed the connection without answering`)),
    );
  });
}
