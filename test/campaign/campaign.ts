/**
 * What every campaign scenario shares: its size (reduced for CI, `--full` for
 * the figures in docs/reliability.md), the seed it replays from, and the row
 * it reports for the table.
 *
 * A scenario is a tap file `test/campaign/NAME.campaign.ts`. It reads
 * `campaign()`, draws every random choice from `campaign().random(NAME)`, and
 * calls `reportRow` once with what it did; `run.ts` prints the rows.
 */
import fs from 'node:fs';
import net from 'node:net';
import { seededRandom } from '../helpers/seeded-random';

export interface Campaign {
  /** The sizes of docs/reliability.md rather than CI's reduced ones. */
  full: boolean;
  /** The run's seed: every scenario derives its own stream from it. */
  seed: number;
  /** A deterministic stream in [0, 1) for one scenario of this run. */
  random(scenario: string): () => number;
}

export interface CampaignRow {
  scenario: string;
  /** What was injected, e.g. "20 × kill -9 of the destination". */
  faults: string;
  /** What was checked, e.g. "41,260 flushed blocks". */
  checks: string;
  losses: number;
  crashes: number;
  hangs: number;
  /** The highest RSS of the process under test, MiB. */
  peakRssMiB: number;
  seconds: number;
}

let cached: Campaign | undefined;

export function campaign(): Campaign {
  if (cached) return cached;
  const seed = Number(process.env.FERRY_SEED ?? Math.floor(Math.random() * 2 ** 31) + 1);
  if (!Number.isSafeInteger(seed) || seed <= 0)
    throw new Error(`FERRY_SEED must be a positive integer, not ${process.env.FERRY_SEED}`);
  cached = {
    full: process.env.FERRY_CAMPAIGN_FULL === '1',
    seed,
    random: (scenario) => seededRandom(seed ^ hash32(scenario)),
  };
  return cached;
}

/** Writes the row where `run.ts` collects it, and to the TAP log. */
export function reportRow(row: CampaignRow): void {
  const line = JSON.stringify({ ...row, seed: campaign().seed, full: campaign().full });
  console.log(`# campaign row ${line}`);
  const file = process.env.FERRY_CAMPAIGN_REPORT;
  if (file) fs.appendFileSync(file, line + '\n');
}

function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Once a scenario's tests are done, nothing of it may keep the process alive:
 * sockets still open (to daemons already stopped) are named in the log, so
 * the leak can be found, and destroyed, so the run ends instead of waiting
 * for tap's timeout.
 */
export function closeLeftoverSockets(): string[] {
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
  const named: string[] = [];
  for (const h of handles) {
    if (!(h instanceof net.Socket) || h === process.stdout || h === process.stderr || h === process.stdin) continue;
    named.push(h.remoteAddress ? `tcp ${h.remoteAddress}:${h.remotePort} from :${h.localPort}` : 'pipe or unix socket');
    h.destroy();
  }
  return named;
}

/** Registers closeLeftoverSockets() to run when the scenario file's tests are done. */
export function endCleanly(root: { teardown(fn: () => void): void }): void {
  root.teardown(() => {
    const left = closeLeftoverSockets();
    if (left.length) console.log(`# sockets left open when the tests ended (now closed): ${left.join('; ')}`);
    // Node's own clean-up at exit was seen to spin for minutes at 100% CPU after a fuzzing file's
    // tests had all ended (in Environment::CleanupHandles, a reset socket's handle never closing,
    // its fd still open): once every report is written, leave without that clean-up.
    process.once('exit', (code) => process.exit(code));
  });
}
