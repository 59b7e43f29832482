// Piscina worker entry: instantiates the kernels once per thread and runs batch
// tasks. Results travel back by transfer (Piscina.move), never by copy.
import { move, transferableSymbol, valueSymbol } from 'piscina';
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

export default function runTask(task: WorkerTask): unknown {
  const { value, transfer } = executeTask(task);
  return moved(value, transfer);
}
