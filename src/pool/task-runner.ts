// Runs one pool task on the calling thread: the workers' body, and the pool's
// inline path for small urgent tasks. Returns the result and the buffers a
// worker hands back by transfer.
import { BatchCodec } from '../codec/batch-codec';
import type { CodecSelection, WorkerTask } from './tasks';

const codecs = new Map<string, BatchCodec>();

function codecFor(task: CodecSelection): BatchCodec {
  const key = `${task.codec}/${task.level ?? ''}/${task.acceleration ?? ''}/${task.kernelPath ?? ''}`;
  let codec = codecs.get(key);
  if (!codec) {
    codec = new BatchCodec(task);
    codecs.set(key, codec);
  }
  return codec;
}

export function executeTask(task: WorkerTask): {
  value: object;
  transfer: ArrayBufferLike[];
} {
  switch (task.op) {
    case 'encode': {
      // The payload goes back in the input's own buffer: no allocation here.
      const blocks = new Uint8Array(task.blocks);
      const started = performance.now();
      const r = codecFor(task).encode(blocks, task.blockSize, blocks);
      // Time spent encoding, without queueing: what the source's codec choice weighs.
      const workerMs = performance.now() - started;
      return {
        value: { ...r, workerMs },
        transfer: [task.blocks, r.encodings.buffer, r.lengths.buffer, r.checksums.buffer],
      };
    }
    case 'decode': {
      const payload = new Uint8Array(task.payload, task.payloadOffset, task.payloadLength);
      const size = task.encodings.length * task.blockSize;
      // Blocks go back in the payload's buffer when it is large enough (a recycled batch buffer).
      const into = task.payload.byteLength >= size ? new Uint8Array(task.payload, 0, size) : undefined;
      const r = codecFor(task).decode(payload, task, task.blockSize, into);
      return {
        value: r,
        transfer: into ? [task.payload, r.status.buffer] : [r.blocks.buffer, r.status.buffer, task.payload],
      };
    }
    case 'hash': {
      const r = codecFor(task).hash(new Uint8Array(task.blocks), task.blockSize);
      return { value: { ...r, blocks: task.blocks }, transfer: [r.checksums.buffer, r.zero.buffer, task.blocks] };
    }
  }
}

/** Bytes a task works on, for the inline threshold. */
export function taskBytes(task: WorkerTask): number {
  switch (task.op) {
    case 'encode':
    case 'hash':
      return task.blocks.byteLength;
    case 'decode':
      return task.payloadLength + task.encodings.length * task.blockSize;
  }
}
