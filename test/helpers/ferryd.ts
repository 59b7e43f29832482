/**
 * `ferry daemon` for tests: a ferryd.toml in a temp directory, the daemon as
 * a child process (waited for by its `serving` line), and its control socket
 * spoken to directly.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { sendControl } from '../../src/control/control-client';
import { parseDaemonResponseLine, type DaemonRequest } from '../../src/control/daemon-protocol';
import type { MigrationReport } from '../../src/daemon/migration-status';
import { startFerry, type FerryDaemon } from './ferry-daemon';
import { until } from './until';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export interface Ferryd {
  dir: string;
  config: string;
  control: string;
  stateDir: string;
}

/** Writes ferryd.toml: the [daemon] and [wire] keys given (state and control in `dir`), plus any TOML appended. */
export function ferrydConfig(
  dir: string,
  daemon: Record<string, string | number> = {},
  more = '',
  wire: Record<string, string | boolean> = { insecure: true },
): Ferryd {
  const control = path.join(dir, 'ferryd.sock');
  const stateDir = path.join(dir, 'state');
  const keys = { state_dir: stateDir, control, listen: '127.0.0.1:0', persist_interval_ms: 200, ...daemon };
  const lines = Object.entries(keys).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  const config = path.join(dir, 'ferryd.toml');
  const wireLines = Object.entries({ ...wire, workers: 1 }).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  fs.writeFileSync(config, `[daemon]\n${lines.join('\n')}\n\n[wire]\n${wireLines.join('\n')}\n\n${more}`);
  return { dir, config, control, stateDir };
}

export function startFerryd(t: Teardownable, d: Ferryd): Promise<FerryDaemon> {
  return startFerry(t, ['daemon', '--config', d.config]);
}

/** The NBD port of a started daemon. */
export function nbdPort(daemon: FerryDaemon): number {
  const a = String(daemon.serving.address);
  return Number(a.slice(a.lastIndexOf(':') + 1));
}

/** One request; resolves with the answer, rejects with the daemon's refusal. */
export async function ctl(d: Ferryd, request: DaemonRequest): Promise<Record<string, unknown>> {
  const response = await sendControl(d.control, request, 120_000, parseDaemonResponseLine);
  if (!response.ok) throw new Error(response.error);
  return response.status;
}

export async function status(d: Ferryd, name: string): Promise<MigrationReport> {
  return (await ctl(d, { cmd: 'status', name })) as unknown as MigrationReport;
}

export async function untilState(d: Ferryd, name: string, state: string, timeoutMs = 120_000): Promise<void> {
  await until(async () => (await status(d, name)).state === state, `${name} is ${state}`, timeoutMs, 100);
}

export function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}
