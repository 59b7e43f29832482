/**
 * Preloaded (`node -r`) into the servers the tests spawn, which get a pipe
 * from the test process as fd 3. If the test process dies without running its
 * teardown (tap kills a test file that times out), the pipe closes and the
 * server goes too, instead of lingering on a port. The pipe is unref'd, so it
 * never keeps the server alive itself.
 */
import net from 'node:net';
import { isMainThread } from 'node:worker_threads';

// Worker threads inherit `-r` with the rest of execArgv. Only the main thread
// watches the pipe: a worker's second handle on fd 3 closes it when the worker
// exits, and the next worker then finds an fd of another type and dies.
if (isMainThread) {
  const parent = new net.Socket({ fd: 3, readable: true, writable: false });
  const dieWithParent = (): void => void process.kill(process.pid, 'SIGKILL');
  parent.on('end', dieWithParent);
  parent.on('error', dieWithParent);
  parent.resume();
  parent.unref();
}
