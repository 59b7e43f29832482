// A pool worker that cannot start while the file named by
// FERRY_TEST_WORKER_START_MARKER exists (as a worker whose module or kernel
// fails to load); once the file is gone it is the real worker.
import fs from 'node:fs';
import runTask from '../../src/pool/worker';

const marker = process.env.FERRY_TEST_WORKER_START_MARKER;
if (marker && fs.existsSync(marker)) throw new Error('this worker cannot start');

export default runTask;
