/** pino JSON lines on stderr, so stdout stays free for command output. */
import pino, { Logger } from 'pino';

export function createLogger(level: string, name = 'ferry'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}
