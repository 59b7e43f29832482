/**
 * pino on stderr, so stdout stays free for command output: JSON lines, or
 * coloured one-liners when stderr is a terminal; or JSON lines appended to
 * a log file (`--log-file`, `log.file`).
 */
import fs from 'node:fs';
import pino, { Logger } from 'pino';
import type PinoPretty from 'pino-pretty';

export interface LogSettings {
  level: string;
  /** Append JSON lines here instead of writing to stderr. */
  file?: string;
}

export function createLogger(settings: LogSettings, name = 'ferry'): Logger {
  const options = { name, level: settings.level, base: { pid: process.pid } };
  if (settings.file) {
    let fd: number;
    try {
      fd = fs.openSync(settings.file, 'a', 0o640);
    } catch (e) {
      throw new Error(`cannot open the log file ${settings.file}: ${(e as Error).message}`, { cause: e });
    }
    return pino(options, pino.destination({ fd, sync: false }));
  }
  if (process.stderr.isTTY) {
    // Loaded only for a terminal: it costs a daemon's start time that JSON output does not need.
    const pretty = require('pino-pretty') as typeof PinoPretty;
    return pino(options, pretty({ destination: 2, sync: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,name' }));
  }
  return pino(options, pino.destination({ fd: 2, sync: false }));
}
