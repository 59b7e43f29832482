/**
 * A source (`ferry serve` for plain NBD, `ferry source` for the ferry wire)
 * and a destination over one random source image, on fixed loopback ports so
 * that either can be killed and restarted where the other expects it; a
 * model of every block; and the scenario's counts of losses, crashes and
 * hangs.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { NbdClient } from '../../src/nbd/client';
import { ferryCtl, freePort, servingPort, startFerry, type FerryDaemon } from '../helpers/ferry-daemon';
import { tempDir } from '../helpers/temp-dir';
import { BlockModel, sourceImage, type Mismatch } from './block-model';
import { PeakRss, within } from './peak-rss';

/**
 * The VM's side waits as long as the destination may take to answer a read of a
 * missing block (its fetch_timeout_ms, 60 s by default), as QEMU does: the
 * client's own 30 s silence limit would give up before the destination has.
 */
const VM_STALL_TIMEOUT_MS = 90_000;

export type Transport = 'nbd' | 'ferry';

export interface RigOptions {
  transport: Transport;
  size: number;
  /** Background copy limit while faults are injected (the migration spans them). */
  rate: string;
  /** Extra destination flags. */
  destFlags?: string[];
  /** Where the destination image goes (default: the rig's directory). */
  destDir?: string;
  /** The path between the daemons: given the source's port, the port the destination dials. */
  route?: (sourcePort: number) => Promise<number>;
  /** Authentication flags of both ferry-wire daemons (default --insecure). */
  auth?: string[];
}

/** A daemon the rig started, and whether an exit of it was asked for. */
interface Managed {
  daemon: FerryDaemon;
  killed: boolean;
}

export class MigrationRig {
  readonly dir: string;
  readonly model: BlockModel;
  readonly rss = new PeakRss();
  readonly destImage: string;
  readonly destCtl: string;
  losses = 0;
  torn = 0;
  crashes = 0;
  hangs = 0;
  private source: Managed | null = null;
  private dest: Managed | null = null;
  private sourcePort = 0;
  private destDials = 0;
  private readonly sourcePath: string;

  constructor(
    private readonly t: Test,
    private readonly options: RigOptions,
    random: () => number,
  ) {
    this.dir = tempDir(t);
    this.sourcePath = path.join(this.dir, 'disk.img');
    const image = sourceImage(options.size, random);
    fs.writeFileSync(this.sourcePath, image);
    this.model = new BlockModel(image, random);
    this.destImage = path.join(options.destDir ?? this.dir, 'dest.img');
    this.destCtl = path.join(this.dir, 'dest.ctl');
    t.teardown(() => this.rss.stop());
  }

  get sourceUrl(): string {
    return `${this.options.transport}://127.0.0.1:${this.destDials}/disk.img`;
  }

  get destArgs(): string[] {
    return [
      ...['dest', '--cutover-at-start', '--source', this.sourceUrl, '--image', this.destImage],
      ...['--listen', '127.0.0.1:0', '--control', this.destCtl, '--rate', this.options.rate, '--log-level', 'info'],
      ...(this.options.transport === 'ferry' ? (this.options.auth ?? ['--insecure']) : []),
      ...(this.options.destFlags ?? []),
    ];
  }

  get destDaemon(): FerryDaemon {
    if (!this.dest) throw new Error('no destination running');
    return this.dest.daemon;
  }

  async startSource(): Promise<FerryDaemon> {
    if (!this.sourcePort) {
      this.sourcePort = await freePort();
      this.destDials = this.options.route ? await this.options.route(this.sourcePort) : this.sourcePort;
    }
    const listen = `127.0.0.1:${this.sourcePort}`;
    const args =
      this.options.transport === 'nbd'
        ? ['serve', '--image', this.sourcePath, '--read-only', '--listen', listen]
        : [
            ...['source', '--image', this.sourcePath, '--listen', listen, ...(this.options.auth ?? ['--insecure'])],
            ...['--state-dir', path.join(this.dir, 'source-state')],
          ];
    this.source = this.manage(await this.start(args, 'the source'));
    return this.source.daemon;
  }

  async startDest(args = this.destArgs): Promise<FerryDaemon> {
    this.dest = this.manage(await this.start(args, 'the destination'));
    return this.dest.daemon;
  }

  /** kill -9; resolves once it is gone. */
  async kill(which: 'source' | 'dest'): Promise<void> {
    const m = which === 'source' ? this.source : this.dest;
    if (!m) return;
    m.killed = true;
    await m.daemon.stop('SIGKILL');
  }

  /** A VM connection to the destination. */
  async connect(): Promise<NbdClient> {
    const client = await within(
      NbdClient.connect(
        { host: '127.0.0.1', port: servingPort(this.destDaemon) },
        {
          exportName: 'dest.img',
          stallTimeoutMs: VM_STALL_TIMEOUT_MS,
        },
      ),
      30_000,
      'connecting to the destination',
    );
    client.on('close', () => undefined);
    client.on('error', () => undefined);
    this.t.teardown(() => client.destroy());
    return client;
  }

  /** Reads every touched block; counts and names each that holds what it may not. */
  async checkTouched(client: NbdClient, when: string): Promise<void> {
    const bad = await within(this.model.checkTouched(client), 120_000, `checking touched blocks ${when}`);
    this.count(bad, when);
  }

  /** Lifts the rate limit, waits for completion, stops the destination (exit 0) and checks every block. */
  async finish(): Promise<void> {
    const lifted = await ferryCtl(this.destCtl, 'rate', 'off');
    this.t.ok(lifted.code === 0 || /the migration is complete/.test(lifted.stderr), `rate off: ${lifted.stderr}`);
    const dest = this.destDaemon;
    await within(dest.waitForLog(/^migration (complete|already complete)/, 600_000), 600_000, 'completion');
    this.dest!.killed = true;
    this.t.equal(await dest.stop(), 0, 'the destination exits 0 on SIGTERM');
    this.count(this.model.checkImage(fs.readFileSync(this.destImage)), 'in the final image');
  }

  /** SIGTERM to the destination; its exit code. */
  async stopDest(): Promise<number | null> {
    if (!this.dest) return null;
    this.dest.killed = true;
    return this.dest.daemon.stop();
  }

  async stopAll(): Promise<void> {
    for (const m of [this.dest, this.source]) {
      if (!m) continue;
      m.killed = true;
      await m.daemon.stop();
    }
  }

  private count(bad: Mismatch[], when: string): void {
    this.losses += bad.length;
    this.torn += bad.filter((m) => m.torn).length;
    if (bad.length)
      this.t.fail(`${bad.length} blocks hold what they may not ${when}: ${bad.slice(0, 8).map((m) => m.block)}`);
  }

  private async start(args: string[], what: string): Promise<FerryDaemon> {
    const daemon = await within(startFerry(this.t, args, 60_000), 90_000, `starting ${what}`);
    this.rss.watch(daemon.child.pid);
    return daemon;
  }

  /** An exit nobody asked for is a crash. */
  private manage(daemon: FerryDaemon): Managed {
    const m: Managed = { daemon, killed: false };
    void daemon.exited.then((code) => {
      if (m.killed) return;
      this.crashes++;
      this.t.fail(
        `ferry ${daemon.child.spawnargs[4]} exited on its own (code ${code}):\n${daemon.stderr().slice(-2000)}`,
      );
    });
    return m;
  }
}
