// A pool worker that dies like a crashed thread when asked to: the real
// worker, except that an encode task whose first block starts with
// CRASH_MARKER followed by a decimal exit code makes the thread exit with
// that code in the middle of the task.
import runTask from '../../src/pool/worker';
import type { WorkerTask } from '../../src/pool/tasks';

export const CRASH_MARKER = 'crash-this-worker:';

/** One block that makes the crashing worker exit with `code`. */
export function crashBlock(blockSize: number, code: number): ArrayBuffer {
  const block = new Uint8Array(blockSize);
  block.set(Buffer.from(`${CRASH_MARKER}${code};`));
  return block.buffer;
}

function requestedExitCode(task: WorkerTask): number | undefined {
  if (task.op !== 'encode') return undefined;
  const head = Buffer.from(task.blocks, 0, Math.min(64, task.blocks.byteLength)).toString('latin1');
  const match = new RegExp(`^${CRASH_MARKER}(\\d+);`).exec(head);
  return match ? Number(match[1]) : undefined;
}

export default function runOrCrash(task: WorkerTask): unknown {
  const code = requestedExitCode(task);
  if (code !== undefined) process.exit(code);
  return runTask(task);
}
