/**
 * A control socket that answers `cutover` like a ferry source, and records
 * what the caller wants to know at that moment (for the tests of migrate-vm's
 * switch-over sequence on a disk that needs no fence: a shared export).
 */
import net from 'node:net';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export interface RecordingControl<T> {
  requests: string[];
  /** What `observe` returned at each cutover. */
  observed: T[];
}

export async function startRecordingControl<T>(
  t: Teardownable,
  socketPath: string,
  observe: () => Promise<T>,
  answer: (observed: T) => { ok: true } | { ok: false; error: string },
): Promise<RecordingControl<T>> {
  const state: RecordingControl<T> = { requests: [], observed: [] };
  const server = net.createServer((socket) => {
    let pending = '';
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('data', (text: string) => {
      pending += text;
      const nl = pending.indexOf('\n');
      if (nl < 0) return;
      const line = pending.slice(0, nl);
      state.requests.push(line);
      const cmd = (JSON.parse(line) as { cmd: string }).cmd;
      if (cmd !== 'cutover') {
        socket.end(JSON.stringify({ ok: false, error: `unexpected ${cmd}` }) + '\n');
        return;
      }
      void observe().then((seen) => {
        state.observed.push(seen);
        const a = answer(seen);
        const response = a.ok ? { ok: true, status: { state: 'fenced', blocksTotal: 0 } } : a;
        socket.end(JSON.stringify(response) + '\n');
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return state;
}
