/**
 * `npm run test:campaign [-- --full] [-- --seed N] [-- --only NAME]`: runs
 * the campaign scenarios (build/test/campaign/*.campaign.js) under tap, one
 * at a time, and prints their rows as the table of docs/reliability.md.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';

const program = new Command('test:campaign')
  .option('--full', 'the sizes of docs/reliability.md (hours) rather than the reduced CI run')
  .option('--seed <n>', 'replay a run', (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('a positive integer');
    return n;
  })
  .option('--only <name...>', 'only these scenarios (file names without .campaign.js)')
  .parse();
const options = program.opts<{ full?: boolean; seed?: number; only?: string[] }>();

const seed = options.seed ?? crypto.randomInt(1, 2 ** 31);
const dir = __dirname;
let files = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.campaign.js'))
  .sort();
if (options.only) {
  const unknown = options.only.filter((n) => !files.includes(`${n}.campaign.js`));
  if (unknown.length) {
    console.error(
      `no such scenario: ${unknown.join(', ')} (have: ${files.map((f) => f.replace('.campaign.js', '')).join(', ')})`,
    );
    process.exit(2);
  }
  files = files.filter((f) => options.only!.includes(f.replace('.campaign.js', '')));
}
const report = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-campaign-')), 'rows.jsonl');
console.log(
  `campaign seed ${seed} (${options.full ? 'full' : 'reduced'}); replay with npm run test:campaign -- --seed ${seed}${options.full ? ' --full' : ''}`,
);

// npm runs scripts from the package's root, where tap's bin is.
const result = spawnSync(
  path.resolve('node_modules', '.bin', 'tap'),
  ['--jobs', '1', '--timeout', options.full ? '14400' : '900', ...files.map((f) => path.join(dir, f))],
  {
    stdio: 'inherit',
    env: {
      ...process.env,
      FERRY_SEED: String(seed),
      FERRY_CAMPAIGN_FULL: options.full ? '1' : '0',
      FERRY_CAMPAIGN_REPORT: report,
    },
  },
);

const rows = fs.existsSync(report)
  ? fs
      .readFileSync(report, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  : [];
console.log('\n| scenario | faults injected | checks made | losses | crashes | hangs | peak RSS (MiB) | time (s) |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(
    `| ${String(r.scenario)} | ${String(r.faults)} | ${String(r.checks)} | ${String(r.losses)} | ${String(r.crashes)} | ${String(r.hangs)} | ${String(r.peakRssMiB)} | ${String(r.seconds)} |`,
  );
}
console.log(`\nseed ${seed}`);
process.exit(result.status ?? 1);
