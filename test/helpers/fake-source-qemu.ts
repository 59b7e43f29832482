/**
 * A source QEMU for the migrate-vm tests, behind a FakeQmp: its run state and
 * its migration, moved on by the commands as QEMU 7.2 moves them (MIGRATION
 * events after the answer, the VM resumed when a migration fails or is cancelled).
 */
import type { FakeAnswer, FakeQmp, ReceivedCommand } from './fake-qmp';

export interface FakeMigrationOptions {
  /** What `migrate` does: start, be refused, or start and fail before converging. */
  migrate?: 'ok' | 'refused' | 'fail' | 'never-converges';
  /** Fail after migrate-continue (the device state did not make it). */
  failAfterContinue?: boolean;
  /** query-migrate status before anything starts. */
  initialStatus?: string;
  vmStatus?: string;
}

/** A source QEMU: its run state and its migration, moved on by the commands as QEMU would. */
export class FakeSourceQemu {
  vm: string;
  migration: string;
  pause = false;
  events = false;
  errorDesc: string | undefined;
  qmp!: FakeQmp;

  constructor(private readonly o: FakeMigrationOptions) {
    this.vm = o.vmStatus ?? 'running';
    this.migration = o.initialStatus ?? 'none';
  }

  /** Moves the migration to `status`, with its event, after the current answer went out. */
  private to(status: string): void {
    this.migration = status;
    if (status === 'pre-switchover' || status === 'device') this.vm = 'finish-migrate';
    if (status === 'completed') this.vm = 'postmigrate';
    if (status === 'failed' || status === 'cancelled') this.vm = 'running'; // QEMU resumes the VM
    if (this.events) this.qmp.event('MIGRATION', { status });
  }

  private later(...steps: string[]): void {
    setImmediate(() => {
      for (const s of steps) this.to(s);
    });
  }

  handle(cmd: ReceivedCommand): FakeAnswer {
    const args = cmd.arguments ?? {};
    switch (cmd.execute) {
      case 'query-status':
        return { return: { status: this.vm, running: this.vm === 'running' } };
      case 'query-migrate': {
        if (this.migration === 'none') return { return: {} };
        const info: Record<string, unknown> = {
          status: this.migration,
          ram: { transferred: 1000, remaining: 0, total: 1000 },
        };
        if (this.migration === 'completed') Object.assign(info, { downtime: 42, 'total-time': 900, 'setup-time': 3 });
        if (this.errorDesc) info['error-desc'] = this.errorDesc;
        return { return: info };
      }
      case 'migrate-set-capabilities':
        for (const c of args.capabilities as Array<{ capability: string; state: boolean }>) {
          if (c.capability === 'pause-before-switchover') this.pause = c.state;
          if (c.capability === 'events') this.events = c.state;
        }
        return { return: {} };
      case 'migrate-set-parameters':
        return { return: {} };
      case 'migrate':
        if (this.o.migrate === 'refused')
          return {
            error: { class: 'GenericError', desc: `Failed to connect to '${String(args.uri)}': Connection refused` },
          };
        this.to('setup');
        if (this.o.migrate === 'fail') {
          this.errorDesc = 'Unable to write to socket: Broken pipe';
          this.later('active', 'failed');
        } else if (this.o.migrate === 'never-converges') this.later('active');
        else this.later('active', this.pause ? 'pre-switchover' : 'device', ...(this.pause ? [] : ['completed']));
        return { return: {} };
      case 'migrate-continue':
        if (this.migration !== args.state)
          return { error: { class: 'GenericError', desc: `Migration not in expected state: ${this.migration}` } };
        if (this.o.failAfterContinue) {
          this.errorDesc = 'Unable to write to socket: Connection reset by peer';
          this.later('device', 'failed');
        } else this.later('device', 'completed');
        return { return: {} };
      case 'migrate_cancel':
        this.later('cancelling', 'cancelled');
        return { return: {} };
      case 'stop':
        this.vm = 'paused';
        return { return: {} };
      default:
        return { error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` } };
    }
  }
}
