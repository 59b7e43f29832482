/**
 * An urgent fetch is answered with the block's bytes, never with a reference:
 * the block a reference names may still be on its way to the destination,
 * and refusing it costs a second round trip while the VM waits. Background
 * fetches keep references (the same blocks, asked in the background, come as
 * one, which shows the source would have sent it).
 */
import t from 'tap';
import crypto from 'node:crypto';
import { FetchFlag } from '../src/wire/protocol';
import { fetchFlags } from '../src/upstream/wire-upstream';
import { startWireSession } from './helpers/wire-source';

const BS = 4096;

t.test('only background fetches may be answered with references', async (t) => {
  t.equal(fetchFlags('urgent') & FetchFlag.NoReferences, FetchFlag.NoReferences);
  t.equal(fetchFlags('background') & FetchFlag.NoReferences, 0);
});

t.test('an urgent fetch of a repeated block gets bytes, not a reference', async (t) => {
  // Blocks 0 and 5 hold the same random content; the rest differ.
  const image = crypto.randomBytes(16 * BS);
  image.copy(image, 5 * BS, 0, BS);
  const { upstream } = await startWireSession(t, image, BS, 'ferry-urgent-ref-');

  // The source has now sent block 0's content on this session: a repeat of it may become a reference.
  t.same(await upstream.fetch(0, BS, 'background'), image.subarray(0, BS));
  t.same(await upstream.fetch(5 * BS, BS, 'urgent'), image.subarray(5 * BS, 6 * BS), 'the urgent block is right');
  t.equal(upstream.stats.blocksByEncoding.reference ?? 0, 0, 'no reference in the urgent reply');
  t.equal(upstream.stats.referencesRefused, 0, 'nothing refused, so no second round trip');

  // The same block asked in the background comes as a reference to block 0, which this
  // destination (no local blocks attached) cannot use: refused, then fetched as bytes.
  t.same(await upstream.fetch(5 * BS, BS, 'background'), image.subarray(5 * BS, 6 * BS));
  t.equal(upstream.stats.blocksByEncoding.reference, 1, 'the background reply was a reference');
  t.equal(upstream.stats.referencesRefused, 1);
});
