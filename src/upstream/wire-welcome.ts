/**
 * Whether a stream's WELCOME fits the source this destination copies: the
 * wire version it speaks and, once the first stream said which image it
 * serves, that same image (identity and size) on every later stream. A
 * source that answers a reconnect with another image must not feed it: its
 * blocks would be another disk's, and their checksums would hold.
 */
import type { Welcome } from '../wire/messages';
import { WIRE_VERSION } from '../wire/protocol';

export interface KnownImage {
  identity: string;
  size: number;
}

export interface WelcomeProblem {
  reason: string;
  /** Another image: reconnecting to the same source cannot cure it. */
  otherImage: boolean;
}

export function welcomeProblem(w: Welcome, known: KnownImage | null): WelcomeProblem | null {
  if (w.version !== WIRE_VERSION)
    return { reason: `WELCOME of wire version ${w.version}, not ${WIRE_VERSION}`, otherImage: false };
  if (known && (w.identity !== known.identity || w.imageSize !== known.size)) {
    return {
      reason: `the source now serves another image (identity ${w.identity || '(none)'}, size ${w.imageSize}; copying identity ${known.identity}, size ${known.size})`,
      otherImage: true,
    };
  }
  return null;
}
