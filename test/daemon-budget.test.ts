/**
 * The host budget: max_rate shared by weight, what a capped migration leaves
 * going to the others, copy slots, and each migration's rate split between
 * its disks.
 */
import t from 'tap';
import { shareBudget, type BudgetMigration } from '../src/daemon/budget';

const m = (name: string, extra: Partial<BudgetMigration> = {}): BudgetMigration => ({
  name,
  weight: 1,
  rate: null,
  wantsCopy: true,
  cutOver: false,
  copyingDisks: ['vda'],
  ...extra,
});

t.test('no host cap: each migration has its own cap or none', async (t) => {
  const s = shareBudget({ maxRate: null, maxConcurrent: 0, migrations: [m('a'), m('b', { rate: 1000 })] });
  t.equal(s.get('a')!.rate, null);
  t.equal(s.get('a')!.disks.get('vda'), null);
  t.equal(s.get('b')!.rate, 1000);
});

t.test('the host cap is split by weight; a capped migration leaves the rest to the others', async (t) => {
  const s = shareBudget({
    maxRate: 1200,
    maxConcurrent: 0,
    migrations: [m('a'), m('b', { weight: 2 }), m('c', { rate: 100 })],
  });
  t.equal(s.get('c')!.rate, 100);
  t.equal(s.get('a')!.rate, 366);
  t.equal(s.get('b')!.rate, 733);
  const total = [...s.values()].reduce((n, x) => n + (x.rate ?? 0), 0);
  t.ok(total <= 1200, 'never above the host cap');
});

t.test('paused and finished migrations take no share', async (t) => {
  const s = shareBudget({
    maxRate: 1000,
    maxConcurrent: 0,
    migrations: [m('a'), m('b', { wantsCopy: false }), m('c', { copyingDisks: [] })],
  });
  t.equal(s.get('a')!.rate, 1000);
  t.same([s.get('b')!.copying, s.get('c')!.copying], [false, false]);
  t.same([s.get('b')!.queued, s.get('c')!.queued], [false, false]);
});

t.test('copy slots: first come first served, cut-over migrations first', async (t) => {
  const s = shareBudget({
    maxRate: null,
    maxConcurrent: 2,
    migrations: [m('a'), m('b'), m('c', { cutOver: true }), m('d')],
  });
  t.same(
    ['a', 'b', 'c', 'd'].map((n) => s.get(n)!.copying),
    [true, false, true, false],
  );
  t.same(
    ['a', 'b', 'c', 'd'].map((n) => s.get(n)!.queued),
    [false, true, false, true],
  );
});

t.test("a migration's rate is split between its disks still copying", async (t) => {
  const s = shareBudget({
    maxRate: 900,
    maxConcurrent: 0,
    migrations: [m('a', { copyingDisks: ['vda', 'vdb', 'vdc'] })],
  });
  t.same([...s.get('a')!.disks.values()], [300, 300, 300]);
});
