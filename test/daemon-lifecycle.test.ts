/**
 * The lifecycle state machine: what each verb does from each stage, which
 * it refuses and why, and that asking twice is answered as asking once.
 */
import t from 'tap';
import { decide, STAGES, VERBS, view, type DiskFacts, type Position } from '../src/daemon/lifecycle';

const warming: DiskFacts = { complete: false, pastWarming: false, blocksHeld: 10, blocksTotal: 100 };
const cutOver: DiskFacts = { complete: false, pastWarming: true, blocksHeld: 50, blocksTotal: 100 };
const complete: DiskFacts = { complete: true, pastWarming: true, blocksHeld: 100, blocksTotal: 100 };
const at = (stage: Position['stage'], paused = false): Position => ({ stage, paused });

t.test('the happy path: created, started, paused, resumed, cut over, forgotten', async (t) => {
  t.match(decide('start', at('created'), warming), { ok: true, stage: 'started', effect: 'start' });
  t.match(decide('pause', at('started'), warming), { ok: true, stage: 'started', paused: true, effect: 'budget' });
  t.match(decide('resume', at('started', true), warming), { ok: true, paused: false, effect: 'budget' });
  t.match(decide('cutover', at('started'), warming), { ok: true, stage: 'cutover', effect: 'cutover' });
  t.match(decide('forget', at('cutover'), complete), { ok: true, effect: 'forget' });
});

t.test('every verb is idempotent: the second ask lands where the first did', async (t) => {
  for (const stage of STAGES)
    for (const paused of [false, true])
      for (const facts of [warming, cutOver, complete])
        for (const verb of VERBS) {
          const once = decide(verb, at(stage, paused), facts);
          if (!once.ok || once.effect === 'forget' || once.effect === 'abort') continue;
          const twice = decide(verb, { stage: once.stage, paused: once.paused }, facts);
          t.ok(twice.ok, `${verb} twice from ${stage}${paused ? ' paused' : ''}`);
          if (twice.ok) t.same([twice.stage, twice.paused], [once.stage, once.paused]);
        }
  // Abort and forget finish their work when asked again (after a crash in the middle).
  t.match(decide('abort', at('aborting'), warming), { ok: true, effect: 'abort' });
});

t.test('abort: before cutover it removes; after cutover it is refused with the reason', async (t) => {
  for (const stage of ['creating', 'created', 'started'] as const)
    t.match(decide('abort', at(stage), warming), { ok: true, stage: 'aborting', effect: 'abort' });
  t.match(decide('abort', at('cutover'), warming), { ok: false, reason: /cutover has happened/ });
  t.match(
    decide('abort', at('started'), cutOver),
    { ok: false, reason: /this host is the authority/ },
    'a disk that cut over on its own (the VM wrote here) counts',
  );
});

t.test('refusals name why', async (t) => {
  t.match(decide('forget', at('started'), warming), { ok: false, reason: /not complete \(10 of 100 blocks held\)/ });
  t.match(decide('start', at('creating'), warming), { ok: false, reason: /still being created/ });
  t.match(decide('start', at('aborting'), warming), { ok: false, reason: /being aborted/ });
  t.match(decide('pause', at('cutover'), complete), { ok: false, reason: /complete/ });
});

t.test('the state an operator reads', async (t) => {
  const f = (phases: string[], extra: Partial<DiskFacts> = {}) => ({ ...warming, ...extra, phases, failed: false });
  t.equal(view(at('created'), f(['warming', 'warming'])), 'created');
  t.equal(view(at('started'), f(['warming'])), 'copying');
  t.equal(view(at('started', true), f(['warming'])), 'paused');
  t.equal(view(at('cutover'), f(['post-copy', 'warming'])), 'cutting-over', 'one disk done, one not: not yet');
  t.equal(view(at('cutover'), f(['post-copy', 'complete'])), 'post-copy');
  t.equal(view(at('cutover', true), f(['post-copy', 'post-copy'])), 'paused', 'paused after cutover');
  t.equal(view(at('cutover'), f(['complete', 'complete'], { complete: true })), 'complete');
  t.equal(view(at('started'), { ...f(['warming']), failed: true }), 'failed');
  t.equal(view(at('aborting'), f([])), 'aborting');
});
