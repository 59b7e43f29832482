/**
 * qemu-storage-daemon as a test's NBD source: a raw image as node `disk0`, an
 * NBD server on a Unix socket and a QMP monitor on another. --daemonize makes
 * the parent exit once both listen; the daemon is killed at teardown.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { runOk } from './run';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export interface StorageDaemon {
  nbdSocket: string;
  url(exportName: string): string;
  /** Runs one QMP command; rejects with QEMU's error description. */
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
}

export async function startStorageDaemon(t: Teardownable, dir: string, image: string): Promise<StorageDaemon> {
  const nbdSocket = path.join(dir, 'qsd-nbd.sock');
  const qmpSocket = path.join(dir, 'qsd-qmp.sock');
  const pidFile = path.join(dir, 'qsd.pid');
  await runOk('qemu-storage-daemon', [
    ...['--blockdev', `driver=file,filename=${image},node-name=file0`],
    ...['--blockdev', 'driver=raw,file=file0,node-name=disk0'],
    ...['--nbd-server', `addr.type=unix,addr.path=${nbdSocket}`],
    ...['--chardev', `socket,path=${qmpSocket},server=on,wait=off,id=qmp0`],
    ...['--monitor', 'chardev=qmp0'],
    ...['--pidfile', pidFile, '--daemonize'],
  ]);
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  const monitor = await QmpConnection.open(qmpSocket);
  t.teardown(() => monitor.close());
  await monitor.command('qmp_capabilities');
  return {
    nbdSocket,
    url: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${nbdSocket}`,
    qmp: (command, args) => monitor.command(command, args),
  };
}

/** QMP over a Unix socket: one command at a time, events skipped. */
class QmpConnection {
  private buffered = '';
  private waiter: ((line: string) => void) | null = null;
  private readonly lines: string[] = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      this.buffered += text;
      let nl: number;
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        if (line.includes('"event"')) continue;
        const waiter = this.waiter;
        this.waiter = null;
        if (waiter) waiter(line);
        else this.lines.push(line);
      }
    });
  }

  static async open(socketPath: string): Promise<QmpConnection> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(socketPath, () => resolve(s));
      s.once('error', reject);
    });
    const qmp = new QmpConnection(socket);
    await qmp.nextLine(); // the greeting
    return qmp;
  }

  async command(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    this.socket.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    const reply = JSON.parse(await this.nextLine()) as { return?: unknown; error?: { desc: string } };
    if (reply.error) throw new Error(`QMP ${execute}: ${reply.error.desc}`);
    return reply.return;
  }

  close(): void {
    this.socket.destroy();
  }

  private nextLine(): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}
