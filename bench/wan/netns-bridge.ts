/**
 * Two network namespaces joined by tunbridge (a userspace link between two TUN devices):
 * real packets and real kernel TCP, with delay, a rate cap, a drop-tail queue and loss.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { measureFidelity } from './fidelity';
import {
  checkWanLinkOptions,
  type LinkFidelity,
  type WanCounters,
  type WanLink,
  type WanLinkOptions,
} from './wan-link';

const run = promisify(execFile);

const SOURCE_ADDRESS = '198.18.0.1';
const DEST_ADDRESS = '198.18.0.2';
const SOURCE_C = path.resolve(__dirname, '../../../bench/wan/tunbridge.c');
const BINARY = path.resolve(__dirname, '../tunbridge');

export interface BridgeCounters extends WanCounters {
  packetsToDest: number;
  packetsToSource: number;
  /** Drop tail in the bridge's queue (or a full device on the far side). */
  drops: number;
  /** Random loss asked for. */
  lost: number;
}

async function ip(...args: string[]): Promise<void> {
  try {
    await run('ip', args, { timeout: 10_000 });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new Error(`ip ${args.join(' ')} failed: ${stderr || (err as Error).message}`, { cause: err });
  }
}

async function deleteNamespace(name: string): Promise<void> {
  await run('ip', ['netns', 'delete', name], { timeout: 10_000 }).catch(() => {});
}

/**
 * Deletes this run's names if left over, and those of runs whose process is gone
 * (killed before close()); a live run's namespaces are left alone.
 */
async function deleteStaleNamespaces(...own: string[]): Promise<void> {
  const { stdout } = await run('ip', ['netns', 'list'], { timeout: 10_000 });
  const stale = new Set(own);
  for (const line of stdout.split('\n')) {
    const m = /^(ferry-(?:src|dst)-(\d+))\b/.exec(line);
    if (m && !isAlive(Number(m[2]))) stale.add(m[1]);
  }
  for (const name of stale) await deleteNamespace(name);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A namespace's default comes from the host and cannot be changed to a restricted algorithm from inside it. */
async function readCongestionControl(ns: string): Promise<string> {
  const { stdout } = await run('ip', ['netns', 'exec', ns, 'sysctl', '-n', 'net.ipv4.tcp_congestion_control'], {
    timeout: 10_000,
  });
  return stdout.trim();
}

/** Compiles tunbridge.c when the binary is missing or older than the source. */
export async function buildTunbridge(): Promise<string> {
  const source = fs.statSync(SOURCE_C);
  const binary = fs.statSync(BINARY, { throwIfNoEntry: false });
  if (binary && binary.mtimeMs >= source.mtimeMs) return BINARY;
  fs.mkdirSync(path.dirname(BINARY), { recursive: true });
  const tmp = `${BINARY}.${process.pid}`;
  try {
    await run('cc', ['-O2', '-pthread', '-o', tmp, SOURCE_C], { timeout: 60_000 });
  } catch (err) {
    throw new Error(`compiling ${SOURCE_C} failed: ${(err as { stderr?: string }).stderr?.trim() || err}`, {
      cause: err,
    });
  }
  // Rename so that a parallel run never executes a half-written binary.
  fs.renameSync(tmp, BINARY);
  return BINARY;
}

export class NetnsBridge implements WanLink {
  readonly kind = 'netns-tun-bridge';
  readonly sourcePrefix: string[];
  readonly destPrefix: string[];
  readonly sourceListenHost = SOURCE_ADDRESS;
  private latest: BridgeCounters = {
    bytesToDest: 0,
    bytesToSource: 0,
    packetsToDest: 0,
    packetsToSource: 0,
    drops: 0,
    lost: 0,
    queueDelayToDest: [],
  };
  private closed = false;
  private requests = 0;
  private answered = -1;
  private readonly requestWaiters = new Set<() => void>();

  private constructor(
    readonly note: string,
    readonly sourceNamespace: string,
    readonly destNamespace: string,
    private readonly bridge: ChildProcess,
  ) {
    this.sourcePrefix = ['ip', 'netns', 'exec', sourceNamespace];
    this.destPrefix = ['ip', 'netns', 'exec', destNamespace];
    let partial = '';
    bridge.stdout!.on('data', (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) if (line.startsWith('{')) this.absorb(JSON.parse(line));
    });
    bridge.stdin!.on('error', () => undefined); // a bridge that died is seen at its exit
    bridge.once('exit', () => this.wakeRequests());
  }

  static async open(options: WanLinkOptions, log?: Logger): Promise<NetnsBridge> {
    const { bandwidthBitsPerSecond: rate, oneWayLatencyMs: latency, loss = 0 } = options;
    checkWanLinkOptions(options);
    if (process.getuid?.() !== 0) throw new Error('network namespaces not permitted: not root');
    try {
      fs.accessSync('/dev/net/tun', fs.constants.R_OK | fs.constants.W_OK);
    } catch (err) {
      throw new Error(`no usable /dev/net/tun: ${(err as Error).message}`, { cause: err });
    }
    const binary = await buildTunbridge();

    const id = process.pid;
    const srcNs = `ferry-src-${id}`;
    const dstNs = `ferry-dst-${id}`;
    // Device names are at most 15 characters; they live in the root namespace only until moved.
    const srcTun = `fsrc${id}`;
    const dstTun = `fdst${id}`;
    let bridge: ChildProcess | null = null;
    let congestionControl: string;
    try {
      await deleteStaleNamespaces(srcNs, dstNs);
      await ip('netns', 'add', srcNs);
      await ip('netns', 'add', dstNs);
      bridge = spawn(binary, [srcTun, dstTun, String(latency * 1000), String(rate), String(loss)], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      await waitReady(bridge);
      for (const [tun, ns, address] of [
        [srcTun, srcNs, SOURCE_ADDRESS],
        [dstTun, dstNs, DEST_ADDRESS],
      ]) {
        await ip('link', 'set', tun, 'netns', ns);
        await ip('-n', ns, 'link', 'set', 'lo', 'up');
        await ip('-n', ns, 'link', 'set', tun, 'mtu', '1500');
        await ip('-n', ns, 'addr', 'add', `${address}/30`, 'dev', tun);
        await ip('-n', ns, 'link', 'set', tun, 'up');
      }
      if (options.congestionControl) {
        for (const ns of [srcNs, dstNs]) {
          await run(
            'ip',
            ['netns', 'exec', ns, 'sysctl', '-q', '-w', `net.ipv4.tcp_congestion_control=${options.congestionControl}`],
            {
              timeout: 5000,
            },
          );
        }
      }
      congestionControl = await readCongestionControl(srcNs);
    } catch (err) {
      bridge?.kill('SIGKILL');
      await deleteNamespace(srcNs);
      await deleteNamespace(dstNs);
      throw err;
    }
    const link = new NetnsBridge(
      `network namespaces ${srcNs} (${SOURCE_ADDRESS}) and ${dstNs} (${DEST_ADDRESS}) joined by tunbridge; ` +
        `TCP congestion control ${congestionControl}${options.congestionControl ? '' : " (the host's)"}`,
      srcNs,
      dstNs,
      bridge,
    );
    log?.info({ srcNs, dstNs, rate, latency, loss }, 'wan link: namespace bridge up');
    return link;
  }

  async reach(port: number): Promise<{ host: string; port: number }> {
    return { host: SOURCE_ADDRESS, port };
  }

  /** As of tunbridge's last report (every 250 ms). */
  counters(): BridgeCounters {
    return { ...this.latest };
  }

  /** Asks tunbridge for its counters now and waits for the answer (the last report once it has exited). */
  async freshCounters(): Promise<BridgeCounters> {
    const request = ++this.requests;
    const alive = (): boolean => this.bridge.exitCode === null && this.bridge.signalCode === null;
    if (!this.closed && alive()) {
      const answered = new Promise<void>((resolve) => {
        const check = (): void => {
          if (this.answered >= request || !alive()) {
            this.requestWaiters.delete(check);
            resolve();
          }
        };
        this.requestWaiters.add(check);
      });
      this.bridge.stdin!.write(`${request}\n`);
      await answered;
    }
    return this.counters();
  }

  async measure(): Promise<LinkFidelity> {
    return measureFidelity(this, 'connect');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const exited = new Promise<void>((resolve) => {
      if (this.bridge.exitCode !== null || this.bridge.signalCode !== null) resolve();
      else this.bridge.once('exit', () => resolve());
    });
    // Closing stdin ends tunbridge (and prints final counters); SIGKILL if it lingers.
    this.bridge.stdin!.end();
    const timer = setTimeout(() => this.bridge.kill('SIGKILL'), 2_000);
    await exited;
    clearTimeout(timer);
    await deleteNamespace(this.sourceNamespace);
    await deleteNamespace(this.destNamespace);
  }

  private wakeRequests(): void {
    for (const check of [...this.requestWaiters]) check();
  }

  private absorb(line: Record<string, unknown>): void {
    const c = line as Record<string, number>;
    this.answered = Math.max(this.answered, c.req ?? -1);
    this.latest = {
      bytesToDest: c.bytesAB,
      bytesToSource: c.bytesBA,
      packetsToDest: c.packetsAB,
      packetsToSource: c.packetsBA,
      drops: c.dropsAB + c.dropsBA,
      lost: c.lostAB + c.lostBA,
      queueDelayToDest: Array.isArray(line.qAB) ? (line.qAB as number[]) : [],
    };
    this.wakeRequests();
  }
}

function waitReady(bridge: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    let stdout = '';
    const timer = setTimeout(() => done(new Error('tunbridge: not ready within 5 s')), 5_000);
    const onData = (chunk: Buffer): void => {
      stdout += chunk.toString();
      if (stdout.includes('ready\n')) done(null);
    };
    const onStderr = (chunk: Buffer): void => void (stderr += chunk.toString());
    const onExit = (code: number | null, signal: string | null): void =>
      done(new Error(`tunbridge exited with ${signal ?? code}: ${stderr.trim()}`));
    const onError = (err: Error): void => done(new Error(`tunbridge failed to start: ${err.message}`));
    function done(err: Error | null): void {
      clearTimeout(timer);
      bridge.stdout!.off('data', onData);
      bridge.off('exit', onExit);
      bridge.off('error', onError);
      if (err) reject(err);
      else resolve();
    }
    bridge.stdout!.on('data', onData);
    bridge.stderr!.on('data', onStderr);
    bridge.on('exit', onExit);
    bridge.on('error', onError);
  });
}
