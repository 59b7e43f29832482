/**
 * The host's background-copy budget shared between migrations, as a pure
 * function: who may copy now (max_concurrent_copies), and at what rate
 * (max_rate split by weight, each migration capped by its own rate, what a
 * capped migration leaves over going to the others), then each migration's
 * rate split evenly between its disks that still copy.
 *
 * Only background copies are paced. On-demand fetches (a VM waiting for a
 * block) are never counted against the budget, so they keep the headroom
 * between max_rate and the link; on each connection and in the shared codec
 * pool they go ahead of background batches.
 */

export interface BudgetInput {
  /** Host-wide cap in bytes/s; null for none. */
  maxRate: number | null;
  /** Migrations copying at once; 0 for no limit. */
  maxConcurrent: number;
  /** In creation order: the earlier migration gets a copy slot first. */
  migrations: BudgetMigration[];
}

export interface BudgetMigration {
  name: string;
  weight: number;
  /** The migration's own cap (all its disks together); null for none. */
  rate: number | null;
  /** It wants to copy: started, not paused, some disk still missing blocks. */
  wantsCopy: boolean;
  /** After cutover the VM runs here and waits on missing blocks: such migrations get slots first. */
  cutOver: boolean;
  /** Its disks still missing blocks. */
  copyingDisks: string[];
}

export interface BudgetShare {
  /** It may copy now; false: paused by the operator, complete, or waiting for a slot. */
  copying: boolean;
  /** Waiting for a copy slot (max_concurrent_copies). */
  queued: boolean;
  /** The migration's rate now, bytes/s; null for unpaced. */
  rate: number | null;
  /** Each copying disk's rate, bytes/s; null for unpaced. */
  disks: Map<string, number | null>;
}

export function shareBudget(input: BudgetInput): Map<string, BudgetShare> {
  const wanting = input.migrations.filter((m) => m.wantsCopy && m.copyingDisks.length > 0);
  // Stable: among equals, creation order decides.
  const ordered = [...wanting].sort((a, b) => Number(b.cutOver) - Number(a.cutOver));
  const slots = input.maxConcurrent > 0 ? ordered.slice(0, input.maxConcurrent) : ordered;
  const rates = splitByWeight(input.maxRate, slots);
  const out = new Map<string, BudgetShare>();
  for (const m of input.migrations) {
    const copying = slots.includes(m);
    const rate = copying ? rates.get(m.name)! : null;
    const disks = new Map<string, number | null>();
    if (copying)
      for (const disk of m.copyingDisks)
        disks.set(disk, rate === null ? null : Math.max(1, Math.floor(rate / m.copyingDisks.length)));
    out.set(m.name, { copying, queued: wanting.includes(m) && !copying, rate, disks });
  }
  return out;
}

/** Weighted max-min fairness: shares by weight, a cap below its share frees the rest for the others. */
function splitByWeight(total: number | null, migrations: BudgetMigration[]): Map<string, number | null> {
  const rates = new Map<string, number | null>();
  if (total === null) {
    for (const m of migrations) rates.set(m.name, m.rate);
    return rates;
  }
  let left = total;
  let open = [...migrations];
  for (;;) {
    const weights = open.reduce((sum, m) => sum + m.weight, 0);
    const capped = open.filter((m) => m.rate !== null && m.rate < (left * m.weight) / weights);
    if (capped.length === 0) {
      for (const m of open) rates.set(m.name, Math.max(1, Math.floor((left * m.weight) / weights)));
      return rates;
    }
    for (const m of capped) {
      rates.set(m.name, m.rate);
      left -= m.rate!;
    }
    open = open.filter((m) => !capped.includes(m));
    if (open.length === 0) return rates;
  }
}
