export { CodecPool } from './codec-pool';
export type { CodecPoolOptions, TaskOptions, EncodeResult, HashResult } from './codec-pool';
export { QueueFullError, PoolClosedError, WorkerCrashError } from './errors';
export { Kernels, defaultKernelPath } from '../kernels/kernel-loader';
