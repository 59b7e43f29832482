/**
 * The control socket's wire format: one JSON request per line in, one JSON response per line out.
 * Pure: strings in, typed values out, and back. Sockets live in control-server.ts / control-client.ts.
 */
import { z } from 'zod';
import type { MigrationStatus } from '../migrate/status';
import type { SourceStatus } from '../wire/source-sessions';
import type { Diagnostics } from './diagnostics';

/** A request or response line longer than this is refused (it is far beyond any real one). */
export const MAX_LINE_BYTES = 64 * 1024;

const positiveRate = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

const requestSchemas = {
  status: z.object({ cmd: z.literal('status') }).strict(),
  pause: z.object({ cmd: z.literal('pause') }).strict(),
  resume: z.object({ cmd: z.literal('resume') }).strict(),
  // null removes the cap; 0 is refused because it would be a pause by another name.
  rate: z.object({ cmd: z.literal('rate'), bytesPerSecond: positiveRate.nullable() }).strict(),
  detach: z.object({ cmd: z.literal('detach') }).strict(),
  reconnect: z.object({ cmd: z.literal('reconnect'), url: z.string().min(1).max(4096).optional() }).strict(),
  // cutover: a ferry dest enters cutover; a ferry source fences and sends the final write sets.
  cutover: z.object({ cmd: z.literal('cutover') }).strict(),
  abort: z.object({ cmd: z.literal('abort') }).strict(),
  // ferry source: takes writes again after an abandoned migration.
  unfence: z.object({ cmd: z.literal('unfence') }).strict(),
} as const;

export type ControlCommand = keyof typeof requestSchemas;
export const CONTROL_COMMANDS = Object.keys(requestSchemas) as ControlCommand[];

export type ControlRequest = { [K in ControlCommand]: z.infer<(typeof requestSchemas)[K]> }[ControlCommand];

/** A ferry dest answers with its migration's status, a ferry source with its sessions'. */
/** A status answer also carries what the process holds open (diagnostics), to see leaks by. */
export type ControlResponse =
  { ok: true; status: (MigrationStatus | SourceStatus) & { diagnostics?: Diagnostics } } | { ok: false; error: string };

export type ParsedRequest<R = ControlRequest> = { ok: true; request: R } | { ok: false; error: string };

/** A value for an error message: JSON, cut at 80 characters. */
export function describe(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 80 ? text.slice(0, 77) + '...' : text;
}

function isCommand(value: unknown): value is ControlCommand {
  return typeof value === 'string' && Object.hasOwn(requestSchemas, value);
}

/** Checks an already-decoded request; every error names the field and the bad value. */
export function validateRequest(value: unknown): ParsedRequest {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return { ok: false, error: `request must be a JSON object (got ${describe(value)})` };
  const cmd = (value as { cmd?: unknown }).cmd;
  if (!isCommand(cmd))
    return {
      ok: false,
      error: `unknown cmd ${describe(cmd)} (expected one of ${CONTROL_COMMANDS.join(', ')})`,
    };
  const result = requestSchemas[cmd].safeParse(value);
  if (result.success) return { ok: true, request: result.data as ControlRequest };
  const issue = result.error.issues[0];
  if (issue.code === 'unrecognized_keys')
    return { ok: false, error: `${cmd}: unknown field ${issue.keys.map((k) => `"${k}"`).join(', ')}` };
  const field = issue.path.join('.');
  const got = (value as Record<string, unknown>)[String(issue.path[0])];
  const expected =
    cmd === 'rate' ? 'a positive integer (bytes per second) or null for no limit' : issue.message.toLowerCase();
  return { ok: false, error: `${cmd}: ${field} must be ${expected} (got ${describe(got)})` };
}

/** Parses one request line (without its newline). */
export function parseRequestLine(line: string): ParsedRequest {
  return decodeRequestLine(line, validateRequest);
}

/** Decodes one request line as JSON (bounded) and checks it with `validate`. */
export function decodeRequestLine<R>(line: string, validate: (value: unknown) => ParsedRequest<R>): ParsedRequest<R> {
  if (Buffer.byteLength(line) > MAX_LINE_BYTES)
    return { ok: false, error: `request line is longer than ${MAX_LINE_BYTES} bytes` };
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    return { ok: false, error: `request is not valid JSON: ${(err as Error).message}` };
  }
  return validate(value);
}

export function formatRequestLine(request: ControlRequest): string {
  return JSON.stringify(request) + '\n';
}

export function formatResponseLine(response: ControlResponse): string {
  return JSON.stringify(response) + '\n';
}

const responseSchema = z.union([
  z.object({ ok: z.literal(true), status: z.looseObject({ state: z.string(), blocksTotal: z.number() }) }),
  z.object({
    ok: z.literal(true),
    status: z.looseObject({ role: z.literal('source'), sessions: z.array(z.unknown()) }),
  }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);

/** Parses one response line; throws naming the line when it is not a control response. */
export function parseResponseLine(line: string): ControlResponse {
  return decodeResponseLine(line, responseSchema) as ControlResponse;
}

/** Decodes one response line as JSON of `schema`'s shape; throws naming the line when it is not. */
export function decodeResponseLine<T>(line: string, schema: z.ZodType<T>): T {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`control response is not valid JSON: ${describe(line)}`);
  }
  const result = schema.safeParse(value);
  if (!result.success) throw new Error(`control response has an unexpected shape: ${describe(value)}`);
  return result.data;
}
