export { CodecPool } from './codec-pool';
export type { CodecPoolOptions, TaskOptions, EncodeResult, HashResult } from './codec-pool';
export { QueueFullError, PoolClosedError, WorkerCrashError } from './errors';
export { whenQueued } from './when-queued';
export { Kernels, defaultKernelPath } from '../kernels/kernel-loader';
