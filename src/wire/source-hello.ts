/**
 * Whether `ferry source` accepts a destination's HELLO: wire version, export
 * name, image identity, block size and batch size. Pure: a HELLO in, a
 * refusal or nothing out.
 */
import type { Hello } from './messages';
import { RefuseCode, WIRE_VERSION } from './protocol';
import { blockSizeProblem, MAX_BATCH_BLOCKS } from '../util/limits';

export interface HelloRefusal {
  code: RefuseCode;
  reason: string;
}

/** The refusal a HELLO earns from a source serving `exportName` / `identity`, or null when it is accepted. */
export function helloRefusal(hello: Hello, exportName: string, identity: string): HelloRefusal | null {
  if (hello.version !== WIRE_VERSION) {
    return { code: RefuseCode.Version, reason: `wire version ${hello.version} is not supported` };
  }
  if (hello.exportName !== exportName && hello.exportName !== '') {
    return {
      code: RefuseCode.UnknownExport,
      reason: `unknown export "${hello.exportName}" (this source serves "${exportName}")`,
    };
  }
  if (hello.identity && hello.identity !== identity) {
    return { code: RefuseCode.IdentityMismatch, reason: `this source serves image ${identity}, not ${hello.identity}` };
  }
  const bs = hello.blockSize;
  const blockSizeIssue = blockSizeProblem(bs);
  if (blockSizeIssue) return { code: RefuseCode.BadRequest, reason: `block size ${bs} ${blockSizeIssue}` };
  if (hello.maxBatchBlocks < 1 || hello.maxBatchBlocks > MAX_BATCH_BLOCKS) {
    return {
      code: RefuseCode.BadRequest,
      reason: `maxBatchBlocks ${hello.maxBatchBlocks} is not 1..${MAX_BATCH_BLOCKS}`,
    };
  }
  return null;
}
