/**
 * The control socket of `ferry daemon`: the same framing as a ferry dest's
 * (one JSON request per line, one JSON response per line), with verbs that
 * name the migration they act on. Pure: strings in, typed values out.
 */
import * as v from 'valibot';
import {
  decodeRequestLine,
  decodeResponseLine,
  describe,
  fieldProblem,
  positiveRate,
  type ParsedRequest,
} from './protocol';
import { issueKeys, PARSE_CONFIG } from '../util/schema-issues';

const name = v.pipe(v.string(), v.minLength(1), v.maxLength(64));
const exportName = v.pipe(v.string(), v.minLength(1), v.maxLength(128));

const daemonSchemas = {
  // The spec is checked by the daemon against the config file's [[migration]] schema.
  create: v.strictObject({ cmd: v.literal('create'), spec: v.record(v.string(), v.unknown()) }),
  start: v.strictObject({ cmd: v.literal('start'), name }),
  list: v.strictObject({ cmd: v.literal('list') }),
  status: v.strictObject({ cmd: v.literal('status'), name }),
  pause: v.strictObject({ cmd: v.literal('pause'), name }),
  resume: v.strictObject({ cmd: v.literal('resume'), name }),
  // null removes the migration's own cap (the host's max_rate still binds).
  rate: v.strictObject({ cmd: v.literal('rate'), name, bytesPerSecond: v.nullable(positiveRate) }),
  cutover: v.strictObject({ cmd: v.literal('cutover'), name }),
  abort: v.strictObject({ cmd: v.literal('abort'), name }),
  forget: v.strictObject({ cmd: v.literal('forget'), name }),
  // Re-reads the config file's rates, limits, declared migrations and source exports (as SIGHUP does).
  reload: v.strictObject({ cmd: v.literal('reload') }),
  // The images this daemon sources: each export's sessions and figures.
  sources: v.strictObject({ cmd: v.literal('sources') }),
  // Gives a source export's VM its disk back after an abandoned cutover (refused once a destination took over).
  'source-unfence': v.strictObject({ cmd: v.literal('source-unfence'), name: exportName }),
  // Fences a tracked source export and hands its final write set to every destination (a source-initiated cutover).
  'source-cutover': v.strictObject({ cmd: v.literal('source-cutover'), name: exportName }),
} as const;

export type DaemonCommand = keyof typeof daemonSchemas;
export const DAEMON_COMMANDS = Object.keys(daemonSchemas) as DaemonCommand[];
export type DaemonRequest = { [K in DaemonCommand]: v.InferOutput<(typeof daemonSchemas)[K]> }[DaemonCommand];

export type DaemonResponse = { ok: true; status: Record<string, unknown> } | { ok: false; error: string };

export function validateDaemonRequest(value: unknown): ParsedRequest<DaemonRequest> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return { ok: false, error: `request must be a JSON object (got ${describe(value)})` };
  const cmd = (value as { cmd?: unknown }).cmd;
  if (typeof cmd !== 'string' || !Object.hasOwn(daemonSchemas, cmd))
    return { ok: false, error: `unknown cmd ${describe(cmd)} (a ferry daemon takes ${DAEMON_COMMANDS.join(', ')})` };
  const schema = daemonSchemas[cmd as DaemonCommand];
  const result = v.safeParse(schema, value, PARSE_CONFIG);
  if (result.success) return { ok: true, request: result.output as DaemonRequest };
  const issue = result.issues[0];
  if (issueKeys(issue).join('.') === 'name' && (value as { name?: unknown }).name === undefined)
    return { ok: false, error: `${cmd}: a ferry daemon runs many migrations: name the migration` };
  return { ok: false, error: `${cmd}: ${fieldProblem(schema, issue, value)}` };
}

export function parseDaemonRequestLine(line: string): ParsedRequest<DaemonRequest> {
  return decodeRequestLine(line, validateDaemonRequest);
}

const responseSchema = v.union([
  v.object({ ok: v.literal(true), status: v.record(v.string(), v.unknown()) }),
  v.object({ ok: v.literal(false), error: v.string() }),
]);

export function parseDaemonResponseLine(line: string): DaemonResponse {
  return decodeResponseLine(line, responseSchema) as DaemonResponse;
}
