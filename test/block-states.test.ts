import t, { type Test } from 'tap';
import path from 'node:path';
import { BlockMap } from '../src/store/block-map';
import { BlockStateError, BlockStates } from '../src/migrate/block-states';
import { tempDir } from './helpers/temp-dir';

function states(t: Test, blocks = 8): BlockStates {
  const map = BlockMap.create(path.join(tempDir(t), 'state'), {
    blockSize: 4096,
    imageSize: blocks * 4096,
    sourceIdentity: 'id',
    sourceUrl: 'nbd://h/x',
    phase: 'warming',
    trackingEpoch: '',
    session: 's',
  });
  t.teardown(() => map.close());
  return new BlockStates(map);
}

t.test('the block map has one owner: a second bit writer is refused', async (t) => {
  const s = states(t);
  t.throws(() => s.map.takeBitWriter(), /already has an owner/);
});

t.test('fetch, land, hold; a second fetch of the same block is discarded', async (t) => {
  const s = states(t);
  const background = s.startFetch(2, false);
  const urgent = s.startFetch(2, true);
  t.equal(background, urgent, 'one transit, two fetches');
  t.equal(s.state(2), 'fetching');
  t.ok(s.beginLanding(urgent));
  t.equal(s.state(2), 'landing');
  s.landed(urgent);
  t.equal(s.state(2), 'held');
  t.notOk(s.beginLanding(background), 'the slower fetch is discarded');
  t.equal(s.state(2), 'held');
});

t.test('a failed fetch returns the block to missing only when it was the last one', async (t) => {
  const s = states(t);
  const a = s.startFetch(1, false);
  s.startFetch(1, true);
  s.fetchFailed(a);
  t.equal(s.state(1), 'fetching');
  s.fetchFailed(a);
  t.equal(s.state(1), 'missing');
});

t.test('a VM claim wins over a fetch in flight; preconditions are checked', async (t) => {
  const s = states(t);
  const fetch = s.startFetch(3, false);
  const claim = s.claim(3, 'vm');
  t.equal(s.state(3), 'claimed');
  t.throws(() => s.startFetch(3, true), BlockStateError, 'no fetch of a claimed block');
  t.throws(() => s.claim(3, 'vm'), /claim is not allowed while it is claimed by vm/);
  t.notOk(s.beginLanding(fetch), 'fetched bytes arriving for a claimed block are discarded');
  s.claimApplied(claim);
  t.equal(s.state(3), 'held');
  t.throws(() => s.claimApplied(claim), /claimApplied is not allowed/);
  t.throws(() => s.startFetch(3, false), /startFetch is not allowed while it is held/);
});

t.test('a VM claim of a fetch the source wrote over still ends held: the VM write is the latest', async (t) => {
  const s = states(t);
  // The final write set at cutover marks a fetch in flight stale; then the destination's VM writes the block whole.
  const fetch = s.startFetch(6, false);
  s.invalidate(6);
  const claim = s.claim(6, 'vm');
  t.notOk(claim.stale, 'the VM claim does not inherit the fetch staleness');
  t.notOk(s.beginLanding(fetch), 'the stale fetch is still discarded');
  s.claimApplied(claim);
  t.equal(s.state(6), 'held', 'held: nothing may fetch the source bytes over the VM write');
});

t.test(
  'a fetch started after the source wrote the block replaces the stale fetches instead of joining them',
  async (t) => {
    const s = states(t);
    const stale = s.startFetch(7, false);
    s.invalidate(7);
    let ended = false;
    void stale.done.then(() => (ended = true));
    const fresh = s.startFetch(7, true);
    t.not(fresh, stale, 'a new record');
    t.notOk(fresh.stale);
    await Promise.resolve();
    t.ok(ended, 'the stale record ended: its waiters look again and find the new one');
    t.equal(s.transit(7), fresh);
    t.ok(s.beginLanding(fresh), 'the fresh bytes land');
    s.landed(fresh);
    t.equal(s.state(7), 'held');
    t.notOk(s.beginLanding(stale), 'the stale bytes arriving later are discarded');
    s.fetchFailed(stale);
    t.equal(s.state(7), 'held', 'a stale fetch failing later changes nothing');
  },
);

t.test('stale bytes the image refused are no error for their waiters: they fetch the block again', async (t) => {
  const s = states(t);
  const landing = s.startFetch(5, true);
  t.ok(s.beginLanding(landing));
  s.invalidate(5); // the final write set at cutover: the bytes being stored are the old ones
  s.landingFailed(landing, new Error('ENOSPC'), Buffer.alloc(4096));
  t.equal(landing.error, null);
  t.equal(landing.unlanded, null, 'and the stale bytes are not served');
  t.equal(s.state(5), 'missing');

  const fresh = s.startFetch(5, true);
  t.ok(s.beginLanding(fresh));
  s.landingFailed(fresh, new Error('ENOSPC'), Buffer.alloc(4096, 1));
  t.match(fresh.error, /ENOSPC/, 'fresh bytes refused: the error reaches the waiters');
  t.ok(fresh.unlanded, 'and a reader is answered from them');
});

t.test('invalidate: held → missing, work in flight ends missing, a VM claim is a bug', async (t) => {
  const s = states(t);
  const t0 = s.startFetch(0, false);
  t.ok(s.beginLanding(t0));
  s.landed(t0);
  t.equal(s.invalidate(0), true);
  t.equal(s.state(0), 'missing');

  const fetching = s.startFetch(1, false);
  s.invalidate(1);
  t.notOk(s.beginLanding(fetching), 'a fetch sent before the source write is discarded');
  t.equal(s.state(1), 'missing');

  const landing = s.startFetch(2, false);
  t.ok(s.beginLanding(landing));
  s.invalidate(2);
  s.landed(landing);
  t.equal(s.state(2), 'missing', 'a landing overtaken by a source write ends missing');

  const hole = s.claim(4, 'hole');
  s.invalidate(4);
  s.claimApplied(hole);
  t.equal(s.state(4), 'missing', 'a hole answer older than the source write is not applied');

  s.claim(5, 'vm');
  t.throws(() => s.invalidate(5), /invalidate is not allowed while it is claimed by vm/);
});

t.test('all-held and missing events', async (t) => {
  const s = states(t, 2);
  let allHeld = 0;
  let missing = 0;
  s.on('all-held', () => allHeld++);
  s.on('missing', () => missing++);
  for (const b of [0, 1]) {
    const c = s.claim(b, 'vm');
    s.claimApplied(c);
  }
  t.equal(allHeld, 1);
  s.invalidate(0);
  t.equal(missing, 1);
  t.equal(s.map.heldCount, 1);
});
