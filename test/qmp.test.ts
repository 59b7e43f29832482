/** QMP: the pure framing at every split, and the client against a fake QEMU. */
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { QmpClient, QmpCommandError, QmpConnectionError, type QmpEvent } from '../src/qemu/qmp';
import { classifyMessage, encodeCommand, QmpDecoder, QmpProtocolError } from '../src/qemu/qmp-protocol';
import { FakeQmp } from './helpers/fake-qmp';
import { tempDir } from './helpers/temp-dir';

const FIXTURE = Buffer.from(
  [
    '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}',
    '{"return": {}, "id": "ferry-1"}',
    '{"error": {"class": "GenericError", "desc": "There\'s a migration process in progress"}, "id": "ferry-2"}',
    '{"timestamp": {"seconds": 1700000000, "microseconds": 500}, "event": "MIGRATION", "data": {"status": "pre-switchover"}}',
    '{"return": {"status": "completed", "downtime": 41}, "id": "ferry-3"}',
  ].join('\r\n') + '\r\n',
);

const EXPECTED = [
  {
    kind: 'greeting',
    version: { major: 7, minor: 2, micro: 22, package: 'Debian 1:7.2' },
    capabilities: ['oob'],
  },
  { kind: 'return', id: 'ferry-1', value: {} },
  { kind: 'error', id: 'ferry-2', errorClass: 'GenericError', desc: "There's a migration process in progress" },
  { kind: 'event', name: 'MIGRATION', data: { status: 'pre-switchover' }, timestamp: 1700000000000.5 },
  { kind: 'return', id: 'ferry-3', value: { status: 'completed', downtime: 41 } },
];

t.test('the decoder gives the same messages for every split of the stream', async (t) => {
  for (let a = 0; a <= FIXTURE.length; a++) {
    const d = new QmpDecoder();
    const got = [...d.push(FIXTURE.subarray(0, a)), ...d.push(FIXTURE.subarray(a))];
    if (JSON.stringify(got) !== JSON.stringify(EXPECTED)) {
      t.same(got, EXPECTED, `split at ${a}`);
      return;
    }
  }
  const d = new QmpDecoder();
  const oneByOne = [...FIXTURE].flatMap((b) => d.push(Buffer.from([b])));
  t.same(oneByOne, EXPECTED, 'one byte at a time');
});

t.test('the decoder refuses what is not QMP, naming it', async (t) => {
  t.throws(() => new QmpDecoder().push(Buffer.from('not json\n')), QmpProtocolError);
  t.throws(() => new QmpDecoder().push(Buffer.from('[1,2]\n')), /not a JSON object: \[1,2\]/);
  t.throws(() => classifyMessage({ hello: 1 }), /unknown kind: \{"hello":1\}/);
});

t.test('a command is one JSON line with its id', async (t) => {
  t.equal(encodeCommand('query-status', undefined, 'ferry-7'), '{"execute":"query-status","id":"ferry-7"}\n');
  t.same(JSON.parse(encodeCommand('migrate', { uri: 'tcp:h:1' }, 'x')), {
    execute: 'migrate',
    arguments: { uri: 'tcp:h:1' },
    id: 'x',
  });
});

t.test('the client negotiates, runs commands by id, and emits events', async (t) => {
  const socketPath = path.join(tempDir(t), 'qmp.sock');
  const fake = await FakeQmp.start(t, socketPath, (cmd) => {
    switch (cmd.execute) {
      case 'query-status':
        return { return: { status: 'running', running: true } };
      case 'slow':
        return 'no-answer';
      case 'migrate':
        return { error: { class: 'GenericError', desc: 'Migration is disabled' } };
      default:
        return { error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` } };
    }
  });
  const qmp = await QmpClient.connect(socketPath);
  t.teardown(() => qmp.close());
  t.same(fake.received[0], { execute: 'qmp_capabilities', id: 'ferry-1' }, 'capabilities negotiated first');
  t.same(qmp.version, { major: 7, minor: 2, micro: 0, package: 'fake' });

  const events: QmpEvent[] = [];
  qmp.on('event', (e: QmpEvent) => events.push(e));

  // A command still unanswered does not hold up the next one: replies go by id.
  const slow = qmp.execute('slow', undefined, 60_000);
  t.same(await qmp.execute('query-status'), { status: 'running', running: true });
  const slowId = fake.received.find((c) => c.execute === 'slow')!.id;
  fake.raw(JSON.stringify({ return: { late: true }, id: slowId }) + '\r\n');
  t.same(await slow, { late: true }, 'the late answer reached its own command');

  const err = await qmp.execute('migrate', { uri: 'tcp:x:1' }).catch((e: unknown) => e);
  t.ok(err instanceof QmpCommandError);
  t.match((err as QmpCommandError).message, 'QEMU refused migrate: Migration is disabled (GenericError)');
  t.equal((err as QmpCommandError).errorClass, 'GenericError');

  const seen = new Promise((resolve) => qmp.once('event', resolve));
  fake.event('MIGRATION', { status: 'active' });
  await seen;
  t.same(events, [{ name: 'MIGRATION', data: { status: 'active' }, timestamp: 1700000000250 }]);
});

t.test('a connection that goes away rejects what was pending, and later commands', async (t) => {
  const socketPath = path.join(tempDir(t), 'qmp.sock');
  const fake = await FakeQmp.start(t, socketPath, () => 'no-answer');
  const qmp = await QmpClient.connect(socketPath);
  const pending = qmp.execute('query-migrate');
  const closed = new Promise((resolve) => qmp.once('close', resolve));
  fake.hangUp();
  await t.rejects(pending, QmpConnectionError);
  await closed;
  t.ok(qmp.closed);
  await t.rejects(qmp.execute('query-status'), /QMP connection on .*qmp\.sock/);
});

t.test('garbage from the peer ends the connection with a protocol error', async (t) => {
  const socketPath = path.join(tempDir(t), 'qmp.sock');
  const fake = await FakeQmp.start(t, socketPath, () => 'no-answer');
  const qmp = await QmpClient.connect(socketPath);
  const pending = qmp.execute('query-status');
  fake.raw('this is not QMP\r\n');
  await t.rejects(pending, QmpProtocolError);
  t.ok(qmp.closed);
});

t.test('connect errors say what is wrong', async (t) => {
  const dir = tempDir(t);
  await t.rejects(QmpClient.connect(path.join(dir, 'none.sock')), /no QMP socket at .*none\.sock \(ENOENT\)/);

  const silent = path.join(dir, 'silent.sock');
  const server = net.createServer(() => undefined);
  await new Promise<void>((resolve) => server.listen(silent, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  await t.rejects(QmpClient.connect(silent, 200), /QEMU did not greet on .*silent\.sock within 200 ms/);
});
