/**
 * The control socket's wire format: one JSON request per line in, one JSON response per line out.
 * Pure: strings in, typed values out, and back. Sockets live in control-server.ts / control-client.ts.
 */
import * as v from 'valibot';
import type { MigrationStatus } from '../migrate/status';
import type { SourceStatus } from '../wire/source-sessions';
import type { Diagnostics } from './diagnostics';
import { issueKeys, PARSE_CONFIG, unknownKeys } from '../util/schema-issues';

/** A request or response line longer than this is refused (it is far beyond any real one). */
export const MAX_LINE_BYTES = 64 * 1024;

export const positiveRate = v.pipe(v.number(), v.safeInteger(), v.gtValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));

const requestSchemas = {
  status: v.strictObject({ cmd: v.literal('status') }),
  pause: v.strictObject({ cmd: v.literal('pause') }),
  resume: v.strictObject({ cmd: v.literal('resume') }),
  // null removes the cap; 0 is refused because it would be a pause by another name.
  rate: v.strictObject({ cmd: v.literal('rate'), bytesPerSecond: v.nullable(positiveRate) }),
  detach: v.strictObject({ cmd: v.literal('detach') }),
  reconnect: v.strictObject({
    cmd: v.literal('reconnect'),
    url: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(4096))),
  }),
  // cutover: a ferry dest enters cutover; a ferry source fences and sends the final write sets.
  cutover: v.strictObject({ cmd: v.literal('cutover') }),
  abort: v.strictObject({ cmd: v.literal('abort') }),
  // ferry source: takes writes again after an abandoned migration.
  unfence: v.strictObject({ cmd: v.literal('unfence') }),
} as const;

export type ControlCommand = keyof typeof requestSchemas;
export const CONTROL_COMMANDS = Object.keys(requestSchemas) as ControlCommand[];

export type ControlRequest = { [K in ControlCommand]: v.InferOutput<(typeof requestSchemas)[K]> }[ControlCommand];

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
  const schema = requestSchemas[cmd];
  const result = v.safeParse(schema, value, PARSE_CONFIG);
  if (result.success) return { ok: true, request: result.output as ControlRequest };
  return { ok: false, error: `${cmd}: ${fieldProblem(schema, result.issues[0], value)}` };
}

/**
 * One refused field: every unknown field by name, or the field, what it
 * must be and what it was. The rate's wording is its own (its schema's would
 * not say that null lifts the cap).
 */
export function fieldProblem(schema: v.GenericSchema, issue: v.BaseIssue<unknown>, value: object): string {
  const unknown = unknownKeys(schema, issue);
  if (unknown.length > 0) return `unknown field ${unknown.map((key) => `"${key}"`).join(', ')}`;
  const path = issueKeys(issue);
  const got = (value as Record<string, unknown>)[String(path[0])];
  const message =
    path[0] === 'bytesPerSecond' ? 'must be a positive integer (bytes per second) or null for no limit' : issue.message;
  return `${path.join('.')} ${message} (got ${describe(got)})`;
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

const responseSchema = v.union([
  v.object({ ok: v.literal(true), status: v.looseObject({ state: v.string(), blocksTotal: v.number() }) }),
  v.object({
    ok: v.literal(true),
    status: v.looseObject({ role: v.literal('source'), sessions: v.array(v.unknown()) }),
  }),
  v.object({ ok: v.literal(false), error: v.string() }),
]);

/** Parses one response line; throws naming the line when it is not a control response. */
export function parseResponseLine(line: string): ControlResponse {
  return decodeResponseLine(line, responseSchema) as ControlResponse;
}

/** Decodes one response line as JSON of `schema`'s shape; throws naming the line when it is not. */
export function decodeResponseLine<T>(line: string, schema: v.GenericSchema<unknown, T>): T {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`control response is not valid JSON: ${describe(line)}`);
  }
  const result = v.safeParse(schema, value);
  if (!result.success) throw new Error(`control response has an unexpected shape: ${describe(value)}`);
  return result.output;
}
