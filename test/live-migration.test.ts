/**
 * migrateVm against a fake QEMU that models the migration states: the QMP
 * sequence, and what happens to the source VM on each failure.
 */
import path from 'node:path';
import t, { Test } from 'tap';
import { CutoverNotRunError, LiveMigrationError, migrateVm } from '../src/qemu/live-migration';
import { QmpClient } from '../src/qemu/qmp';
import { FakeQmp } from './helpers/fake-qmp';
import { FakeSourceQemu, type FakeMigrationOptions } from './helpers/fake-source-qemu';
import { tempDir } from './helpers/temp-dir';

async function setup(
  t: Test,
  o: FakeMigrationOptions = {},
): Promise<{ qemu: FakeSourceQemu; fake: FakeQmp; qmp: QmpClient }> {
  const socketPath = path.join(tempDir(t), 'qmp.sock');
  const qemu = new FakeSourceQemu(o);
  const fake = await FakeQmp.start(t, socketPath, (cmd) => qemu.handle(cmd));
  qemu.qmp = fake;
  const qmp = await QmpClient.connect(socketPath);
  t.teardown(() => qmp.close());
  return { qemu, fake, qmp };
}

t.test('the disk cutover runs with the source VM stopped before switch-over, then QEMU continues', async (t) => {
  const { qemu, fake, qmp } = await setup(t);
  const seenAtCutover: string[] = [];
  const result = await migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    maxBandwidth: 1 << 30,
    downtimeLimitMs: 500,
    cutover: async () => void seenAtCutover.push(`${qemu.vm}/${qemu.migration}`),
  });
  t.same(
    seenAtCutover,
    ['finish-migrate/pre-switchover'],
    'the cutover ran once, the VM stopped, paused before switch-over',
  );
  t.same(fake.received.find((c) => c.execute === 'migrate-set-capabilities')?.arguments, {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: true },
    ],
  });
  t.same(fake.received.find((c) => c.execute === 'migrate-set-parameters')?.arguments, {
    'max-bandwidth': 1 << 30,
    'downtime-limit': 500,
  });
  t.same(fake.received.find((c) => c.execute === 'migrate')?.arguments, { uri: 'tcp:127.0.0.1:4444' });
  t.same(fake.received.find((c) => c.execute === 'migrate-continue')?.arguments, { state: 'pre-switchover' });
  const order = fake.commands.filter((c) => c !== 'query-migrate' && c !== 'query-status');
  t.same(order, ['migrate-set-capabilities', 'migrate-set-parameters', 'migrate', 'migrate-continue']);
  t.equal(result.downtimeMs, 42, "downtime is query-migrate's");
  t.equal(result.totalTimeMs, 900);
  t.ok(result.cutoverAt !== null);
  t.equal(qemu.vm, 'postmigrate');
});

t.test('without a cutover step the migration does not pause', async (t) => {
  const { qemu, fake, qmp } = await setup(t);
  const result = await migrateVm(qmp, { to: 'tcp:127.0.0.1:4444' });
  t.equal(qemu.pause, false, 'pause-before-switchover is set off (a previous run may have left it on)');
  t.notOk(fake.commands.includes('migrate-continue'));
  t.equal(result.cutoverAt, null);
  t.equal(result.cutoverMs, 0);
  t.equal(result.downtimeMs, 42);
});

t.test('a cutover that did not run cancels the migration: the source VM runs on', async (t) => {
  const { qemu, fake, qmp } = await setup(t);
  const err = await migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    cutover: async () => {
      throw new CutoverNotRunError('ferry source refused the cutover: no session');
    },
  }).catch((e: unknown) => e);
  t.ok(err instanceof LiveMigrationError);
  t.equal((err as LiveMigrationError).sourceVm, 'running');
  t.match(
    (err as Error).message,
    /disk cutover did not run: ferry source refused the cutover: no session; the migration was cancelled/,
  );
  t.ok(fake.commands.includes('migrate_cancel'));
  t.notOk(fake.commands.includes('migrate-continue'), 'never switched over');
  t.equal(qemu.migration, 'cancelled');
  t.equal(qemu.vm, 'running');
});

t.test('a cutover of unknown outcome leaves QEMU paused before switch-over, touching nothing', async (t) => {
  const { qemu, fake, qmp } = await setup(t);
  const err = await migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    cutover: async () => {
      throw new Error('did not answer within 30000 ms');
    },
  }).catch((e: unknown) => e);
  t.equal((err as LiveMigrationError).sourceVm, 'paused-at-switchover');
  t.match(
    (err as Error).message,
    /whether the source was fenced is unknown: did not answer.*migrate-continue.*migrate_cancel/,
  );
  t.notOk(fake.commands.includes('migrate_cancel'));
  t.notOk(fake.commands.includes('migrate-continue'));
  t.equal(qemu.migration, 'pre-switchover');
});

t.test('a migration that fails after the cutover stops the source VM (its disk is fenced)', async (t) => {
  const { qemu, fake, qmp } = await setup(t, { failAfterContinue: true });
  let cutovers = 0;
  const err = await migrateVm(qmp, { to: 'tcp:127.0.0.1:4444', cutover: async () => void cutovers++ }).catch(
    (e: unknown) => e,
  );
  t.equal(cutovers, 1);
  t.equal((err as LiveMigrationError).sourceVm, 'stopped');
  t.match(
    (err as Error).message,
    /the migration failed: Unable to write to socket: Connection reset by peer\. The source disk is already fenced/,
  );
  t.ok(fake.commands.includes('stop'));
  t.equal(qemu.vm, 'paused');
});

t.test('QEMU refusing to migrate leaves everything as it was', async (t) => {
  const { qemu, qmp } = await setup(t, { migrate: 'refused' });
  let cutovers = 0;
  const err = await migrateVm(qmp, { to: 'tcp:10.0.0.9:4444', cutover: async () => void cutovers++ }).catch(
    (e: unknown) => e,
  );
  t.match(
    (err as Error).message,
    "QEMU refused to start the migration to tcp:10.0.0.9:4444: Failed to connect to 'tcp:10.0.0.9:4444': Connection refused",
  );
  t.equal(cutovers, 0);
  t.equal(qemu.vm, 'running');
});

t.test('a migration that fails before converging never cuts over', async (t) => {
  const { qemu, qmp } = await setup(t, { migrate: 'fail' });
  let cutovers = 0;
  const err = await migrateVm(qmp, { to: 'tcp:127.0.0.1:4444', cutover: async () => void cutovers++ }).catch(
    (e: unknown) => e,
  );
  t.match(
    (err as Error).message,
    'the migration failed: Unable to write to socket: Broken pipe; the source VM runs on',
  );
  t.equal((err as LiveMigrationError).sourceVm, 'running');
  t.equal(cutovers, 0);
  t.equal(qemu.vm, 'running');
});

t.test('a migration that does not converge in time is cancelled', async (t) => {
  const { qemu, fake, qmp } = await setup(t, { migrate: 'never-converges' });
  let cutovers = 0;
  const err = await migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    timeoutMs: 300,
    cutover: async () => void cutovers++,
  }).catch((e: unknown) => e);
  t.match(
    (err as Error).message,
    'did not converge within 300 ms; the migration was cancelled and the source VM runs on',
  );
  t.ok(fake.commands.includes('migrate_cancel'));
  t.equal(cutovers, 0);
  t.equal(qemu.migration, 'cancelled');
});

t.test('refused up front: a migration already under way, or a VM that is not running', async (t) => {
  const busy = await setup(t, { initialStatus: 'active' });
  await t.rejects(
    migrateVm(busy.qmp, { to: 'tcp:127.0.0.1:1' }),
    /a migration is already under way \(query-migrate status active\)/,
  );
  t.notOk(busy.fake.commands.includes('migrate'));
  const dead = await setup(t, { vmStatus: 'shutdown' });
  await t.rejects(migrateVm(dead.qmp, { to: 'tcp:127.0.0.1:1' }), /the source VM is shutdown/);
  t.notOk(dead.fake.commands.includes('migrate'));
});

t.test('interrupted before switch-over: cancelled, the VM runs on; no cutover', async (t) => {
  const { qemu, fake, qmp } = await setup(t, { migrate: 'never-converges' });
  const interrupt = new AbortController();
  let cutovers = 0;
  const done = migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    signal: interrupt.signal,
    cutover: async () => void cutovers++,
    onStep: (step) => {
      if (step.startsWith('migrate to')) setImmediate(() => interrupt.abort());
    },
  });
  await t.rejects(done, /interrupted before the switch-over; the migration was cancelled and the source VM runs on/);
  t.ok(fake.commands.includes('migrate_cancel'));
  t.equal(cutovers, 0);
  t.equal(qemu.vm, 'running');
});

t.test('interrupted during the cutover: the switch-over is seen through', async (t) => {
  const { qemu, fake, qmp } = await setup(t);
  const interrupt = new AbortController();
  const result = await migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    signal: interrupt.signal,
    cutover: async () => interrupt.abort(),
  });
  t.equal(result.downtimeMs, 42);
  t.notOk(fake.commands.includes('migrate_cancel'), 'never cancelled once the source was fenced');
  t.equal(qemu.vm, 'postmigrate');
});

t.test('losing the QMP connection mid-migration ends the wait with a clear error', async (t) => {
  const { fake, qmp } = await setup(t, { migrate: 'never-converges' });
  let cutovers = 0;
  const done = migrateVm(qmp, {
    to: 'tcp:127.0.0.1:4444',
    cutover: async () => void cutovers++,
    onStep: (step) => {
      if (step.startsWith('migrate to')) setTimeout(() => fake.hangUp(), 50);
    },
  });
  const err = await done.catch((e: unknown) => e);
  t.ok(err instanceof LiveMigrationError, String(err));
  t.equal((err as LiveMigrationError).sourceVm, 'unknown');
  t.match((err as Error).message, /QMP connection .* before the switch-over; nothing was cut over/);
  t.equal(cutovers, 0);
});
