/**
 * Every block's state at the destination, and the only code that changes it.
 *
 *   missing  ── startFetch ──▶ fetching ── beginLanding ──▶ landing ── landed ──▶ held
 *      ▲  │                      │  │                          │                   │
 *      │  │          fetchFailed │  │ claim                     │ landingFailed     │ invalidate
 *      │  │        (last fetch)  ▼  ▼                          ▼                   ▼
 *      │  └────── claim ───────▶ claimed ── claimApplied ─────────────────────▶ held / missing
 *      └──────────────────────── (claimFailed, landingFailed, stale endings) ──────────────
 *
 * - missing: not held, nobody works on it.
 * - fetching: fetches are in flight (an urgent one may overtake a background
 *   one; the first to land wins).
 * - landing: fetched bytes are being written to the image.
 * - claimed: a whole-block VM write, zero or trim, a source hole being
 *   punched, or seed bytes the source's hash vouched for being copied, is
 *   being applied; fetched bytes that arrive are discarded.
 * - held: the image has the block (the bit is set in memory; persist() makes
 *   it durable after the data).
 * - stale (a flag on fetching, landing, hole and seed claims): the source reported a
 *   write to the block after the work began, before cutover; whatever the work
 *   produces is discarded and the block ends missing. A claim or a fetch that
 *   begins after the write is not stale (see claim() and startFetch()).
 *
 * Contract: one thread; every transition is synchronous and checks its
 * precondition (a violation is a bug and throws); callers await only between
 * transitions, holding a Transit as their ticket. A held bit is set only by
 * landed(), claimApplied() and holdAsZero(), after the caller wrote the
 * block's data to the image; the block map's persist() makes that data
 * durable before it writes the bit.
 */
import { EventEmitter } from 'node:events';
import type { BitWriter, BlockMap } from '../store/block-map';

export type BlockState = 'missing' | 'fetching' | 'landing' | 'claimed' | 'held';

/** Who claimed a block: the VM (its write must win), a source hole being punched, or seed bytes being copied. */
export type ClaimKind = 'vm' | 'hole' | 'seed';

/** The record of a block that is not missing and not held; readers wait on it. */
export interface Transit {
  readonly block: number;
  state: 'fetching' | 'landing' | 'claimed';
  claimKind: ClaimKind | null;
  /** Fetches in flight that counted on this transit. */
  fetches: number;
  /** An urgent fetch covers it. */
  urgent: boolean;
  /** The source wrote the block after this work began: it ends missing. */
  stale: boolean;
  /** Why the transit ended without the block becoming held, for the readers waiting on it. */
  error: Error | null;
  /**
   * The source's bytes of a block the image refused to take (a full disk):
   * a read waiting on the block is answered from them, the block stays missing.
   */
  unlanded: Buffer | null;
  /** Settles when the transit ends (made on first use: most transits are never waited on). */
  readonly done: Promise<void>;
}

/** A transit's record, with its end signal made only when someone waits. */
class TransitRecord implements Transit {
  claimKind: ClaimKind | null = null;
  fetches = 0;
  urgent = false;
  stale = false;
  error: Error | null = null;
  unlanded: Buffer | null = null;
  private ended = false;
  private waiting: Promise<void> | null = null;
  private resolve: (() => void) | null = null;

  constructor(
    readonly block: number,
    public state: Transit['state'],
  ) {}

  get done(): Promise<void> {
    if (this.ended) return Promise.resolve();
    this.waiting ??= new Promise<void>((resolve) => (this.resolve = resolve));
    return this.waiting;
  }

  finish(): void {
    this.ended = true;
    this.resolve?.();
  }
}

export class BlockStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BlockStateError';
  }
}

export class BlockStates extends EventEmitter {
  private readonly transits = new Map<number, TransitRecord>();
  private readonly bits: BitWriter;

  constructor(readonly map: BlockMap) {
    super();
    this.bits = map.takeBitWriter();
  }

  get blockCount(): number {
    return this.map.blockCount;
  }

  get inTransit(): number {
    return this.transits.size;
  }

  state(block: number): BlockState {
    if (this.map.isHeld(block)) return 'held';
    return this.transits.get(block)?.state ?? 'missing';
  }

  isHeld(block: number): boolean {
    return this.map.isHeld(block);
  }

  transit(block: number): Transit | undefined {
    return this.transits.get(block);
  }

  /** A missing block nobody works on, at or after `from` and below `limit`, or -1. */
  nextIdle(from: number, limit: number): number {
    let b = this.map.nextMissing(from);
    while (b >= 0 && b < limit && this.transits.has(b)) b = this.map.nextMissing(b + 1);
    return b >= 0 && b < limit ? b : -1;
  }

  /**
   * missing → fetching, or one more fetch of a fetching block. A fetch that
   * starts after the source wrote the block reads the new bytes, so it does
   * not join the stale fetches (whose bytes are discarded): it replaces their
   * record, which ends for its waiters, and they wait on the new one.
   */
  startFetch(block: number, urgent: boolean): Transit {
    if (this.map.isHeld(block)) throw this.violation('startFetch', block);
    let t = this.transits.get(block);
    if (t && t.state !== 'fetching') throw this.violation('startFetch', block);
    if (t?.stale) {
      this.transits.delete(block);
      (t as TransitRecord).finish();
      t = undefined;
    }
    t ??= this.open(block, 'fetching');
    t.fetches++;
    if (urgent) t.urgent = true;
    return t;
  }

  /**
   * A fetch counted on `t` failed. The block goes back to missing when no
   * other fetch is in flight for it and nobody took it over.
   */
  fetchFailed(t: Transit): void {
    t.fetches--;
    if (this.transits.get(t.block) === t && t.state === 'fetching' && t.fetches === 0) this.close(t, false);
  }

  /**
   * A fetch counted on `t` delivered the block. Returns true when its bytes
   * are still wanted (the block is now landing), false when they must be
   * discarded: someone else landed or claimed it, or the source wrote it since.
   */
  beginLanding(t: Transit): boolean {
    t.fetches--;
    if (this.transits.get(t.block) !== t || t.state !== 'fetching') return false;
    if (t.stale) {
      if (t.fetches === 0) this.close(t, false);
      return false;
    }
    t.state = 'landing';
    return true;
  }

  /** landing → held, once the bytes are in the image (or → missing if the source wrote it meanwhile). */
  landed(t: Transit): void {
    this.expect(t, 'landing', 'landed');
    this.close(t, !t.stale);
  }

  /**
   * landing → missing: the image refused the bytes; waiters see `error`, and
   * a reader is answered from `bytes`. Stale bytes were not wanted anyway:
   * their waiters see no error and fetch the block again.
   */
  landingFailed(t: Transit, error: Error, bytes: Buffer | null = null): void {
    this.expect(t, 'landing', 'landingFailed');
    t.error = t.stale ? null : error;
    t.unlanded = t.stale ? null : bytes;
    this.close(t, false);
  }

  /**
   * missing → held as zeros, for a block whose range the caller has just
   * zeroed in the image on this thread (nothing could interleave).
   */
  holdAsZero(block: number): void {
    if (this.map.isHeld(block) || this.transits.has(block)) throw this.violation('holdAsZero', block);
    this.bits.setHeld(block);
    if (this.map.allHeld) this.emit('all-held');
  }

  /** Whether claim() may take the block now (it is missing or only being fetched). */
  claimable(block: number): boolean {
    if (this.map.isHeld(block)) return false;
    const t = this.transits.get(block);
    return !t || t.state === 'fetching';
  }

  /**
   * missing | fetching → claimed: what is fetched from now on is discarded.
   * A claim takes over the fetch's record (its waiters wait for the claim)
   * but not its staleness: a source write that made the fetch stale is older
   * than the claim's bytes, which cover the whole block.
   */
  claim(block: number, kind: ClaimKind): Transit {
    if (!this.claimable(block)) throw this.violation('claim', block);
    const t = this.transits.get(block) ?? this.open(block, 'claimed');
    t.state = 'claimed';
    t.claimKind = kind;
    t.stale = false;
    return t;
  }

  /** claimed → held, once the claim's bytes are in the image (a stale hole claim → missing). */
  claimApplied(t: Transit): void {
    this.expect(t, 'claimed', 'claimApplied');
    this.close(t, !t.stale);
  }

  /** claimed → missing: the claim's write failed. */
  claimFailed(t: Transit): void {
    this.expect(t, 'claimed', 'claimFailed');
    this.close(t, false);
  }

  /**
   * The source wrote the block before cutover: a held copy is stale (→ missing),
   * and work in progress ends missing. A VM claim cannot coexist with source
   * writes (the destination's VM writes only after cutover): that is a bug.
   * Returns true when a held block became missing.
   */
  invalidate(block: number): boolean {
    if (this.map.isHeld(block)) {
      this.bits.clearHeld(block);
      this.emit('missing', block);
      return true;
    }
    const t = this.transits.get(block);
    if (!t) return false;
    if (t.claimKind === 'vm') throw this.violation('invalidate', block);
    t.stale = true;
    return false;
  }

  private open(block: number, state: Transit['state']): TransitRecord {
    const t = new TransitRecord(block, state);
    this.transits.set(block, t);
    return t;
  }

  private close(t: Transit, held: boolean): void {
    const record = this.transits.get(t.block);
    if (record === t) this.transits.delete(t.block);
    if (held) this.bits.setHeld(t.block);
    (t as TransitRecord).finish();
    if (held && this.map.allHeld) this.emit('all-held');
    if (!held) this.emit('missing', t.block);
  }

  private expect(t: Transit, state: Transit['state'], op: string): void {
    if (this.transits.get(t.block) !== t || t.state !== state) throw this.violation(op, t.block);
  }

  private violation(op: string, block: number): BlockStateError {
    const t = this.transits.get(block);
    const detail = t
      ? `${t.state}${t.stale ? ' (stale)' : ''}${t.claimKind ? ` by ${t.claimKind}` : ''}`
      : this.state(block);
    return new BlockStateError(`block ${block}: ${op} is not allowed while it is ${detail}`);
  }
}
