/**
 * The control socket of `ferry daemon`: the same framing as a ferry dest's
 * (one JSON request per line, one JSON response per line), with verbs that
 * name the migration they act on. Pure: strings in, typed values out.
 */
import { z } from 'zod';
import { decodeRequestLine, decodeResponseLine, describe, type ParsedRequest } from './protocol';

const name = z.string().min(1).max(64);
const positiveRate = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

const daemonSchemas = {
  // The spec is checked by the daemon against the config file's [[migration]] schema.
  create: z.object({ cmd: z.literal('create'), spec: z.record(z.string(), z.unknown()) }).strict(),
  start: z.object({ cmd: z.literal('start'), name }).strict(),
  list: z.object({ cmd: z.literal('list') }).strict(),
  status: z.object({ cmd: z.literal('status'), name }).strict(),
  pause: z.object({ cmd: z.literal('pause'), name }).strict(),
  resume: z.object({ cmd: z.literal('resume'), name }).strict(),
  // null removes the migration's own cap (the host's max_rate still binds).
  rate: z.object({ cmd: z.literal('rate'), name, bytesPerSecond: positiveRate.nullable() }).strict(),
  cutover: z.object({ cmd: z.literal('cutover'), name }).strict(),
  abort: z.object({ cmd: z.literal('abort'), name }).strict(),
  forget: z.object({ cmd: z.literal('forget'), name }).strict(),
  // Re-reads the config file's rates, limits, declared migrations and source exports (as SIGHUP does).
  reload: z.object({ cmd: z.literal('reload') }).strict(),
  // The images this daemon sources: each export's sessions and figures.
  sources: z.object({ cmd: z.literal('sources') }).strict(),
  // Gives a source export's VM its disk back after an abandoned cutover (refused once a destination took over).
  'source-unfence': z.object({ cmd: z.literal('source-unfence'), name: z.string().min(1).max(128) }).strict(),
  // Fences a tracked source export and hands its final write set to every destination (a source-initiated cutover).
  'source-cutover': z.object({ cmd: z.literal('source-cutover'), name: z.string().min(1).max(128) }).strict(),
} as const;

export type DaemonCommand = keyof typeof daemonSchemas;
export const DAEMON_COMMANDS = Object.keys(daemonSchemas) as DaemonCommand[];
export type DaemonRequest = { [K in DaemonCommand]: z.infer<(typeof daemonSchemas)[K]> }[DaemonCommand];

export type DaemonResponse = { ok: true; status: Record<string, unknown> } | { ok: false; error: string };

export function validateDaemonRequest(value: unknown): ParsedRequest<DaemonRequest> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return { ok: false, error: `request must be a JSON object (got ${describe(value)})` };
  const cmd = (value as { cmd?: unknown }).cmd;
  if (typeof cmd !== 'string' || !Object.hasOwn(daemonSchemas, cmd))
    return { ok: false, error: `unknown cmd ${describe(cmd)} (a ferry daemon takes ${DAEMON_COMMANDS.join(', ')})` };
  const result = daemonSchemas[cmd as DaemonCommand].safeParse(value);
  if (result.success) return { ok: true, request: result.data as DaemonRequest };
  const issue = result.error.issues[0];
  if (issue.code === 'unrecognized_keys')
    return { ok: false, error: `${cmd}: unknown field ${issue.keys.map((k) => `"${k}"`).join(', ')}` };
  const field = issue.path.join('.');
  const got = (value as Record<string, unknown>)[String(issue.path[0])];
  if (field === 'name' && got === undefined)
    return { ok: false, error: `${cmd}: a ferry daemon runs many migrations: name the migration` };
  return { ok: false, error: `${cmd}: ${field} ${issue.message.toLowerCase()} (got ${describe(got)})` };
}

export function parseDaemonRequestLine(line: string): ParsedRequest<DaemonRequest> {
  return decodeRequestLine(line, validateDaemonRequest);
}

const responseSchema = z.union([
  z.object({ ok: z.literal(true), status: z.record(z.string(), z.unknown()) }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);

export function parseDaemonResponseLine(line: string): DaemonResponse {
  return decodeResponseLine(line, responseSchema) as DaemonResponse;
}
