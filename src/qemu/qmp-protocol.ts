/**
 * QMP (the QEMU Machine Protocol) framing: one JSON object per line each way.
 * Pure: bytes in, typed messages out, and commands to lines. The socket lives in qmp.ts.
 */
import { LineSplitter } from '../control/line-splitter';

/** A line longer than this is refused; QEMU's largest replies (query-block on many disks) are far below it. */
export const MAX_QMP_LINE_BYTES = 16 * 1024 * 1024;

export interface QmpVersion {
  major: number;
  minor: number;
  micro: number;
  package: string;
}

export type QmpMessage =
  | { kind: 'greeting'; version: QmpVersion; capabilities: string[] }
  | { kind: 'return'; id: unknown; value: unknown }
  | { kind: 'error'; id: unknown; errorClass: string; desc: string }
  | { kind: 'event'; name: string; data: Record<string, unknown>; timestamp: number };

/** The peer sent something that is not QMP; the connection cannot be trusted after it. */
export class QmpProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QmpProtocolError';
  }
}

function describe(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > 120 ? text.slice(0, 117) + '...' : text;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Classifies one decoded QMP object; throws QmpProtocolError naming it when it is none of the four kinds. */
export function classifyMessage(value: unknown): QmpMessage {
  if (!isObject(value)) throw new QmpProtocolError(`QMP message is not a JSON object: ${describe(value)}`);
  if (isObject(value.QMP)) {
    const v = isObject(value.QMP.version) && isObject(value.QMP.version.qemu) ? value.QMP.version.qemu : {};
    const num = (x: unknown): number => (typeof x === 'number' ? x : 0);
    const pkg = isObject(value.QMP.version) ? value.QMP.version.package : '';
    const caps = Array.isArray(value.QMP.capabilities) ? value.QMP.capabilities.map(String) : [];
    return {
      kind: 'greeting',
      version: { major: num(v.major), minor: num(v.minor), micro: num(v.micro), package: String(pkg ?? '') },
      capabilities: caps,
    };
  }
  if ('return' in value) return { kind: 'return', id: value.id, value: value.return };
  if (isObject(value.error)) {
    return {
      kind: 'error',
      id: value.id,
      errorClass: String(value.error.class ?? 'GenericError'),
      desc: String(value.error.desc ?? ''),
    };
  }
  if (typeof value.event === 'string') {
    const ts = isObject(value.timestamp) ? value.timestamp : {};
    const seconds = typeof ts.seconds === 'number' ? ts.seconds : 0;
    const micros = typeof ts.microseconds === 'number' ? ts.microseconds : 0;
    return {
      kind: 'event',
      name: value.event,
      data: isObject(value.data) ? value.data : {},
      timestamp: seconds * 1000 + micros / 1000,
    };
  }
  throw new QmpProtocolError(`QMP message of unknown kind: ${describe(value)}`);
}

/** Turns the byte stream from QEMU into messages, for any split of the stream. */
export class QmpDecoder {
  private readonly lines = new LineSplitter(MAX_QMP_LINE_BYTES);

  /** Messages completed by this chunk, in order; throws QmpProtocolError on a line that is not QMP. */
  push(chunk: Buffer): QmpMessage[] {
    const out: QmpMessage[] = [];
    for (const item of this.lines.push(chunk)) {
      if ('tooLong' in item) throw new QmpProtocolError(`QMP line longer than ${MAX_QMP_LINE_BYTES} bytes`);
      let value: unknown;
      try {
        value = JSON.parse(item.line);
      } catch {
        throw new QmpProtocolError(`QMP line is not valid JSON: ${describe(item.line)}`);
      }
      out.push(classifyMessage(value));
    }
    return out;
  }
}

/** One command line: `{"execute": ..., "arguments": ..., "id": ...}` and its newline. */
export function encodeCommand(execute: string, args: Record<string, unknown> | undefined, id: string): string {
  return JSON.stringify(args === undefined ? { execute, id } : { execute, arguments: args, id }) + '\n';
}
