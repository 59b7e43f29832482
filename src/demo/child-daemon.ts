/** Runs a ferry command as a child process and waits for its `serving` log line. */
import { ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';

const FERRY_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'ferry.js');

export interface ChildDaemon {
  child: ChildProcess;
  address: string;
  port: number;
  stop(): Promise<number | null>;
  /** Everything it logged (pino JSON lines). */
  log(): string;
}

export function startChild(args: string[], timeoutMs = 30_000): Promise<ChildDaemon> {
  const child = spawn(process.execPath, [FERRY_BIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ferry ${args[0]} did not start within ${timeoutMs} ms:\n${text}`));
    }, timeoutMs);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`ferry ${args[0]} exited with ${code}:\n${text}`));
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      text += chunk;
      const line = text.split('\n').find((l) => l.includes('"msg":"serving"'));
      if (!line) return;
      clearTimeout(timer);
      const address = String(JSON.parse(line).address);
      resolve({
        child,
        address,
        port: Number(address.slice(address.lastIndexOf(':') + 1)),
        log: () => text,
        stop: () => {
          child.kill('SIGTERM');
          return exited;
        },
      });
    });
  });
}
