/**
 * Which error, if any, the spec gives a request before it reaches the device.
 * Pure, so every rule is tested without a socket.
 */
import { Command, CommandFlag, NbdErrnoName } from './protocol';
import type { RequestMessage } from './server-decoder';
import type { NegotiatedSession } from './negotiation';

const FLAGS_ALLOWED: Record<number, number> = {
  [Command.Read]: CommandFlag.Fua | CommandFlag.Df,
  [Command.Write]: CommandFlag.Fua,
  [Command.Disc]: 0,
  [Command.Flush]: CommandFlag.Fua,
  [Command.Trim]: CommandFlag.Fua,
  [Command.Cache]: CommandFlag.Fua,
  [Command.WriteZeroes]: CommandFlag.Fua | CommandFlag.NoHole | CommandFlag.FastZero,
  [Command.BlockStatus]: CommandFlag.Fua | CommandFlag.ReqOne,
};

export interface RequestLimits {
  /** Largest READ, WRITE or CACHE length served. */
  maxPayload: number;
}

export function checkRequest(
  req: RequestMessage,
  session: NegotiatedSession,
  limits: RequestLimits,
): NbdErrnoName | null {
  const device = session.export.device;
  const allowed = FLAGS_ALLOWED[req.type];
  if (allowed === undefined) return 'EINVAL';
  if ((req.flags & ~allowed) !== 0) return 'EINVAL';
  if (req.flags & CommandFlag.Df && !session.structuredReplies) return 'EINVAL';
  const writes = req.type === Command.Write || req.type === Command.Trim || req.type === Command.WriteZeroes;
  if (writes && device.readOnly) return 'EPERM';
  if (req.type === Command.Trim && !device.canTrim) return 'EINVAL';
  if (req.type === Command.BlockStatus && session.baseAllocationId === 0) return 'EINVAL';
  if (req.type === Command.Disc || req.type === Command.Flush) return null;
  if (req.type === Command.Write && req.payload === null) return 'EOVERFLOW';
  if ((req.type === Command.Read || req.type === Command.Cache) && req.length > limits.maxPayload) {
    return req.flags & CommandFlag.Df ? 'EOVERFLOW' : 'EINVAL';
  }
  if (req.type === Command.BlockStatus && req.length === 0) return 'EINVAL';
  if (req.offset + req.length > device.size) return writes ? 'ENOSPC' : 'EINVAL';
  return null;
}
