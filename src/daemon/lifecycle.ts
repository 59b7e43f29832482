/**
 * The lifecycle of a migration as a pure state machine: a stage and a verb
 * in, the next stage (or the reason for a refusal) and what to do out.
 * Every verb is idempotent: asking again for what is done already answers
 * yes and does nothing new (or re-drives what a crash left unfinished).
 *
 *   creating ──▶ created ──start──▶ started ──cutover──▶ cutover ──(all held)──▶ complete ──forget──▶ gone
 *      │            │                  │
 *      └────────────┴──────abort───────┴──▶ aborting ──▶ gone      (abort is refused once any disk cut over)
 *
 * The stage is what the registry keeps; "complete" and "past warming" are
 * facts the disks report (their block maps hold them).
 */

export const STAGES = ['creating', 'created', 'started', 'cutover', 'aborting'] as const;
export type Stage = (typeof STAGES)[number];

export const VERBS = ['start', 'pause', 'resume', 'cutover', 'abort', 'forget'] as const;
export type Verb = (typeof VERBS)[number];

/** What the disks say. */
export interface DiskFacts {
  /** Every disk holds every block and has left its source. */
  complete: boolean;
  /** Some disk is in cutover or after it: this host holds writes the source does not. */
  pastWarming: boolean;
  blocksHeld: number;
  blocksTotal: number;
}

/** What the daemon does after recording the decision. */
export type Effect =
  /** Nothing beyond recording. */
  | 'none'
  /** Start every disk (the copy begins where the sources allow it). */
  | 'start'
  /** Share the host's budget again (pause, resume). */
  | 'budget'
  /** Cut over every disk (start them first); re-driven after a restart while the stage is cutover. */
  | 'cutover'
  /** Close every disk, remove images and block maps, then drop the record. */
  | 'abort'
  /** Close every disk, drop the record and the block maps, keep the images. */
  | 'forget';

export type Decision = { ok: true; stage: Stage; paused: boolean; effect: Effect } | { ok: false; reason: string };

export interface Position {
  stage: Stage;
  paused: boolean;
}

export function decide(verb: Verb, at: Position, facts: DiskFacts): Decision {
  const { stage, paused } = at;
  const stay = (effect: Effect = 'none'): Decision => ({ ok: true, stage, paused, effect });
  if (stage === 'aborting')
    return verb === 'abort' ? stay('abort') : refuse(`it is being aborted (its images and state are being removed)`);
  if (stage === 'creating' && verb !== 'abort')
    return refuse('it is still being created (its sources are being opened); ask again when it is created');
  switch (verb) {
    case 'start':
      return { ok: true, stage: stage === 'created' ? 'started' : stage, paused, effect: 'start' };
    case 'pause':
    case 'resume':
      if (facts.complete) return refuse('it is complete: no background copy is left to pause or resume');
      return { ok: true, stage, paused: verb === 'pause', effect: 'budget' };
    case 'cutover':
      return { ok: true, stage: 'cutover', paused, effect: 'cutover' };
    case 'abort':
      if (stage === 'cutover' || facts.pastWarming)
        return refuse(
          'the cutover has happened: this host is the authority and holds the VM writes the source does not; ' +
            'finish the migration (or forget it once complete)',
        );
      return { ok: true, stage: 'aborting', paused, effect: 'abort' };
    case 'forget':
      if (!facts.complete)
        return refuse(
          `it is not complete (${facts.blocksHeld} of ${facts.blocksTotal} blocks held): abort it before cutover, or wait`,
        );
      return stay('forget');
  }
}

function refuse(reason: string): Decision {
  return { ok: false, reason };
}

/** The state an operator reads, from the stage and what the disks say. */
export type MigrationView =
  'creating' | 'created' | 'copying' | 'paused' | 'cutting-over' | 'post-copy' | 'complete' | 'aborting' | 'failed';

export function view(at: Position, facts: DiskFacts & { phases: string[]; failed: boolean }): MigrationView {
  if (at.stage === 'aborting') return 'aborting';
  if (facts.failed) return 'failed';
  if (at.stage === 'creating') return 'creating';
  if (facts.complete) return 'complete';
  if (
    facts.phases.some((p) => p === 'cutover') ||
    (at.stage === 'cutover' && facts.phases.some((p) => p === 'warming'))
  )
    return 'cutting-over';
  if (at.paused && at.stage !== 'created') return 'paused';
  if (facts.phases.length > 0 && facts.phases.every((p) => p === 'post-copy' || p === 'complete')) return 'post-copy';
  if (at.stage === 'created') return 'created';
  return 'copying';
}
