// Errors of the codec pool, each with a stable name and code callers can test.

/** The bounded queue for this priority is full: wait (whenNotFull) and retry. */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
  readonly code = 'FERRY_POOL_QUEUE_FULL';
}

/** The pool was closed before the task ran. */
export class PoolClosedError extends Error {
  override readonly name = 'PoolClosedError';
  readonly code = 'FERRY_POOL_CLOSED';
}

/** The worker running the task died; it has been replaced, the task can be retried. */
export class WorkerCrashError extends Error {
  override readonly name = 'WorkerCrashError';
  readonly code = 'FERRY_POOL_WORKER_CRASHED';
}
