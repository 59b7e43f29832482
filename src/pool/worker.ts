// Piscina worker entry: instantiates the kernels once per thread and runs batch
// tasks. Results travel back by transfer (Piscina.move), never by copy.
import os from 'node:os';
import { move, transferableSymbol, valueSymbol, workerData } from 'piscina';
import { executeTask } from './task-runner';
import type { WorkerTask } from './tasks';

function moved<T extends object>(value: T, buffers: ArrayBufferLike[]): unknown {
  return move({
    get [transferableSymbol]() {
      return buffers;
    },
    get [valueSymbol]() {
      return value;
    },
  } as never);
}

// On Linux a thread's niceness is its own: this one yields to the main thread, not the process.
const nice = (workerData as { nice?: number } | undefined)?.nice ?? 0;
if (nice > 0) {
  try {
    os.setPriority(0, nice);
  } catch {
    // Raising one's own niceness is always allowed; a sandbox that refuses it leaves the thread at 0, still correct.
  }
}

export default function runTask(task: WorkerTask): unknown {
  const { value, transfer } = executeTask(task);
  return moved(value, transfer);
}
