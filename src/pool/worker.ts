// Piscina worker entry: instantiates the kernels once per thread and runs batch
// tasks. Results travel back by transfer (Piscina.move), never by copy.
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { BatchCodec } from '../codec/batch-codec';
import type { WorkerTask } from './tasks';

const codecs = new Map<string, BatchCodec>();

function codecFor(task: { codec: string; level?: number; acceleration?: number; kernelPath?: string }): BatchCodec {
  const key = `${task.codec}/${task.level ?? ''}/${task.acceleration ?? ''}/${task.kernelPath ?? ''}`;
  let codec = codecs.get(key);
  if (!codec) {
    codec = new BatchCodec(task);
    codecs.set(key, codec);
  }
  return codec;
}

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
  switch (task.op) {
    case 'encode': {
      // The payload goes back in the input's own buffer: no allocation here.
      const blocks = new Uint8Array(task.blocks);
      const started = performance.now();
      const r = codecFor(task).encode(blocks, task.blockSize, blocks);
      // Time spent encoding, without queueing: what the source's codec choice weighs.
      const workerMs = performance.now() - started;
      return moved({ ...r, workerMs }, [task.blocks, r.encodings.buffer, r.lengths.buffer, r.checksums.buffer]);
    }
    case 'decode': {
      const payload = new Uint8Array(task.payload, task.payloadOffset, task.payloadLength);
      const size = task.encodings.length * task.blockSize;
      // Blocks go back in the payload's buffer when it is large enough (a recycled batch buffer).
      const into = task.payload.byteLength >= size ? new Uint8Array(task.payload, 0, size) : undefined;
      const r = codecFor(task).decode(payload, task, task.blockSize, into);
      return moved(r, into ? [task.payload, r.status.buffer] : [r.blocks.buffer, r.status.buffer, task.payload]);
    }
    case 'hash': {
      const r = codecFor(task).hash(new Uint8Array(task.blocks), task.blockSize);
      return moved({ ...r, blocks: task.blocks }, [r.checksums.buffer, r.zero.buffer, task.blocks]);
    }
    case 'exit':
      // Test hook: simulates a worker dying in the middle of a task.
      process.exit(task.code);
  }
}
