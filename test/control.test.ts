import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import { ControlUnreachableError, sendControl } from '../src/control/control-client';
import { ControlServer } from '../src/control/control-server';
import { LineSplitter } from '../src/control/line-splitter';
import { parseDaemonRequestLine } from '../src/control/daemon-protocol';
import {
  MAX_LINE_BYTES,
  formatRequestLine,
  formatResponseLine,
  parseRequestLine,
  parseResponseLine,
} from '../src/control/protocol';
import { SimulatedMigration, initialStatus } from './helpers/simulated-migration';

const log = pino({ level: 'silent' });

function tempSocket(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-ctl-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'control.sock');
}

/** A raw connection that sends lines and collects response lines, for malformed input. */
async function rawClient(socketPath: string): Promise<{
  send(text: string | Buffer): void;
  next(): Promise<unknown>;
  closed: Promise<void>;
  end(): void;
}> {
  const socket = net.connect(socketPath);
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const lines: string[] = [];
  const waiters: Array<(line: string) => void> = [];
  let buf = '';
  socket.on('data', (chunk) => {
    buf += chunk.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const waiter = waiters.shift();
      if (waiter) waiter(line);
      else lines.push(line);
    }
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  return {
    send: (text) => socket.write(text),
    next: () =>
      new Promise((resolve) => {
        const line = lines.shift();
        if (line !== undefined) resolve(JSON.parse(line));
        else waiters.push((l) => resolve(JSON.parse(l)));
      }),
    closed,
    end: () => socket.end(),
  };
}

t.test('codec: every command parses to its typed request', async (t) => {
  t.same(parseRequestLine('{"cmd":"status"}'), { ok: true, request: { cmd: 'status' } });
  t.same(parseRequestLine('{"cmd":"pause"}'), { ok: true, request: { cmd: 'pause' } });
  t.same(parseRequestLine('{"cmd":"resume"}'), { ok: true, request: { cmd: 'resume' } });
  t.same(parseRequestLine('{"cmd":"rate","bytesPerSecond":1000}'), {
    ok: true,
    request: { cmd: 'rate', bytesPerSecond: 1000 },
  });
  t.same(parseRequestLine('{"cmd":"rate","bytesPerSecond":null}'), {
    ok: true,
    request: { cmd: 'rate', bytesPerSecond: null },
  });
  t.same(parseRequestLine('{"cmd":"detach"}'), { ok: true, request: { cmd: 'detach' } });
  t.same(parseRequestLine('{"cmd":"reconnect"}'), { ok: true, request: { cmd: 'reconnect' } });
  t.same(parseRequestLine('{"cmd":"reconnect","url":"nbd://h:1/x"}'), {
    ok: true,
    request: { cmd: 'reconnect', url: 'nbd://h:1/x' },
  });
  // Round trip through the formatter.
  for (const request of [{ cmd: 'status' as const }, { cmd: 'rate' as const, bytesPerSecond: 5 }]) {
    t.same(parseRequestLine(formatRequestLine(request).trimEnd()), { ok: true, request });
  }
});

t.test('codec: bad requests are refused with the bad value named', async (t) => {
  const error = (line: string): string => {
    const parsed = parseRequestLine(line);
    if (parsed.ok) throw new Error(`expected ${line} to be refused`);
    return parsed.error;
  };
  t.match(error('{"cmd":"explode"}'), /unknown cmd "explode" \(expected one of status, pause, resume, rate/);
  t.match(error('{}'), /unknown cmd undefined/);
  t.match(error('{"cmd":"toString"}'), /unknown cmd "toString"/);
  t.match(error('[1,2]'), /must be a JSON object \(got \[1,2\]\)/);
  t.match(error('"status"'), /must be a JSON object/);
  t.match(error('{"cmd":"status"'), /not valid JSON/);
  t.match(error('{"cmd":"rate","bytesPerSecond":-5}'), /rate: bytesPerSecond must be a positive integer.*\(got -5\)/);
  t.match(error('{"cmd":"rate","bytesPerSecond":0}'), /\(got 0\)/);
  t.match(error('{"cmd":"rate","bytesPerSecond":1.5}'), /\(got 1.5\)/);
  t.match(error('{"cmd":"rate","bytesPerSecond":"10M"}'), /\(got "10M"\)/);
  t.match(error('{"cmd":"rate"}'), /rate: bytesPerSecond must be .*\(got undefined\)/);
  t.match(error('{"cmd":"reconnect","url":42}'), /reconnect: url must be .*\(got 42\)/);
  t.match(error('{"cmd":"pause","force":true}'), /pause: unknown field "force"/);
  t.match(error('{"cmd":"pause","force":true,"now":1}'), /pause: unknown field "force", "now"$/);
  t.match(error('{"cmd":"reconnect","url":""}'), /reconnect: url must not be empty \(got ""\)/);
  t.match(error('{"cmd":"status","pad":"' + 'x'.repeat(MAX_LINE_BYTES) + '"}'), /longer than 65536 bytes/);
});

t.test('daemon codec: requests name their migration; bad ones are refused naming the field', async (t) => {
  t.same(parseDaemonRequestLine('{"cmd":"rate","name":"vm1","bytesPerSecond":null}'), {
    ok: true,
    request: { cmd: 'rate', name: 'vm1', bytesPerSecond: null },
  });
  const error = (line: string): string => {
    const parsed = parseDaemonRequestLine(line);
    if (parsed.ok) throw new Error(`expected ${line} to be refused`);
    return parsed.error;
  };
  t.match(error('{"cmd":"explode"}'), /unknown cmd "explode" \(a ferry daemon takes create, start, list/);
  t.equal(error('{"cmd":"start"}'), 'start: a ferry daemon runs many migrations: name the migration');
  t.equal(error('{"cmd":"start","name":""}'), 'start: name must not be empty (got "")');
  t.equal(error('{"cmd":"start","name":7}'), 'start: name must be a string (got 7)');
  t.equal(
    error('{"cmd":"rate","name":"vm1","bytesPerSecond":0}'),
    'rate: bytesPerSecond must be a positive integer (bytes per second) or null for no limit (got 0)',
  );
  t.equal(error('{"cmd":"list","all":true,"json":1}'), 'list: unknown field "all", "json"');
  t.equal(error('{"cmd":"create","spec":5}'), 'create: spec must be an object (got 5)');
  t.equal(
    error(`{"cmd":"source-unfence","name":"${'x'.repeat(129)}"}`),
    `source-unfence: name must have at most 128 characters (got "${'x'.repeat(76)}...)`,
  );
});

t.test('codec: responses round-trip and malformed ones throw', async (t) => {
  const ok = { ok: true as const, status: initialStatus() };
  t.same(parseResponseLine(formatResponseLine(ok).trimEnd()), ok);
  t.same(parseResponseLine(formatResponseLine({ ok: false, error: 'no' }).trimEnd()), { ok: false, error: 'no' });
  t.throws(() => parseResponseLine('nope'), /not valid JSON/);
  t.throws(() => parseResponseLine('{"ok":true}'), /unexpected shape/);
});

t.test('line splitter: any split of the stream gives the same lines', async (t) => {
  const stream = Buffer.from('{"cmd":"status"}\n\n{"cmd":"pause"}\r\n{"cmd":"resume"}\n');
  const expected = ['{"cmd":"status"}', '{"cmd":"pause"}', '{"cmd":"resume"}'];
  for (let a = 0; a <= stream.length; a++) {
    for (let b = a; b <= stream.length; b++) {
      const splitter = new LineSplitter(64);
      const lines = [stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)].flatMap((c) =>
        splitter.push(c).map((item) => ('line' in item ? item.line : 'TOO LONG')),
      );
      if (JSON.stringify(lines) !== JSON.stringify(expected)) {
        t.same(lines, expected, `split at ${a},${b}`);
        return;
      }
    }
  }
  t.pass('all splits agree');
});

t.test('line splitter: an over-long line is reported once and skipped to its newline', async (t) => {
  const splitter = new LineSplitter(8);
  t.same(splitter.push(Buffer.from('12345')), []);
  t.same(splitter.push(Buffer.from('6789')), [{ tooLong: true }]);
  t.same(splitter.push(Buffer.from('x'.repeat(100))), [], 'the rest of the long line is dropped, not kept');
  t.same(splitter.push(Buffer.from('yy\nok\n')), [{ line: 'ok' }]);
  t.same(new LineSplitter(8).push(Buffer.from('12345678\n')), [{ line: '12345678' }], 'exactly the limit is fine');
});

t.test('server: a named group gets the socket at 0660, set before it appears at its path', async (t) => {
  const socketPath = tempSocket(t);
  const gid = os.userInfo().gid; // a group this process may give its files
  // What the socket was like at the moment it was renamed to its path: it must appear there
  // with its final mode and group, from a directory only this user can enter.
  const renames: Array<{ mode: number; gid: number; dirMode: number }> = [];
  const rename = fs.renameSync;
  fs.renameSync = (from: fs.PathLike, to: fs.PathLike): void => {
    if (to === socketPath) {
      const st = fs.statSync(from);
      renames.push({
        mode: st.mode & 0o777,
        gid: st.gid,
        dirMode: fs.statSync(path.dirname(String(from))).mode & 0o777,
      });
    }
    rename(from, to);
  };
  const server = new ControlServer(new SimulatedMigration({ blocksTotal: 1 }), log);
  try {
    await server.listen(socketPath, String(gid));
  } finally {
    fs.renameSync = rename;
  }
  t.teardown(() => server.close());
  const stat = fs.statSync(socketPath);
  t.equal(stat.mode & 0o777, 0o660, 'group read-write');
  t.equal(stat.gid, gid, 'owned by the group');
  t.same(
    renames,
    [{ mode: 0o660, gid, dirMode: 0o700 }],
    "renamed into place once, already 0660 and the group's, from a 0700 directory",
  );
  t.match(await sendControl(socketPath, { cmd: 'status' }, 2000), { ok: true });

  const other = new ControlServer(new SimulatedMigration({ blocksTotal: 1 }), log);
  await t.rejects(other.listen(tempSocket(t), 'no-such-group-here'), /no group "no-such-group-here" in \/etc\/group/);
});

t.test('server: every command reaches the control and answers with the status', async (t) => {
  const socketPath = tempSocket(t);
  const migration = new SimulatedMigration({ blocksTotal: 10 });
  const server = new ControlServer(migration, log);
  await server.listen(socketPath);
  t.teardown(() => server.close());
  t.equal(fs.statSync(socketPath).mode & 0o777, 0o600, 'socket is owner-only');

  const status = await sendControl(socketPath, { cmd: 'status' }, 2000);
  t.same(status, {
    ok: true,
    status: { ...initialStatus({ blocksTotal: 10 }), diagnostics: status.ok ? status.status.diagnostics : undefined },
  });
  t.match(await sendControl(socketPath, { cmd: 'pause' }, 2000), { ok: true, status: { state: 'paused' } });
  t.match(await sendControl(socketPath, { cmd: 'resume' }, 2000), { ok: true, status: { state: 'migrating' } });
  t.match(await sendControl(socketPath, { cmd: 'rate', bytesPerSecond: 12345 }, 2000), {
    ok: true,
    status: { rateLimitBytesPerSecond: 12345 },
  });
  t.match(await sendControl(socketPath, { cmd: 'rate', bytesPerSecond: null }, 2000), {
    ok: true,
    status: { rateLimitBytesPerSecond: null },
  });
  t.match(await sendControl(socketPath, { cmd: 'reconnect' }, 2000), { ok: true, status: { reconnects: 1 } });
  t.match(await sendControl(socketPath, { cmd: 'reconnect', url: 'nbd://other:10809/disk' }, 2000), {
    ok: true,
    status: { reconnects: 2, source: 'nbd://other:10809/disk' },
  });
  t.same(await sendControl(socketPath, { cmd: 'reconnect', url: 'http://x' }, 2000), {
    ok: false,
    error: 'reconnect: url must start with nbd:// or ferry:// (got "http://x")',
  });
  t.same(await sendControl(socketPath, { cmd: 'detach' }, 2000), {
    ok: false,
    error: 'cannot detach: 10 of 10 blocks are not held yet',
  });
  migration.advance(10);
  t.match(await sendControl(socketPath, { cmd: 'detach' }, 2000), {
    ok: true,
    status: { state: 'complete', connected: false },
  });
  t.same(migration.calls, [
    'pause',
    'resume',
    'rate 12345',
    'rate null',
    'reconnect',
    'reconnect nbd://other:10809/disk',
    'reconnect http://x',
    'detach',
    'detach',
  ]);
});

t.test('server: bad lines get an error reply and the connection stays usable', async (t) => {
  const socketPath = tempSocket(t);
  const migration = new SimulatedMigration();
  const server = new ControlServer(migration, log);
  await server.listen(socketPath);
  t.teardown(() => server.close());
  const client = await rawClient(socketPath);
  t.teardown(() => client.end());

  client.send('not json\n');
  t.match(await client.next(), { ok: false, error: /not valid JSON/ });
  client.send('{"cmd":"fly"}\n');
  t.match(await client.next(), { ok: false, error: /unknown cmd "fly"/ });
  client.send('{"cmd":"rate","bytesPerSecond":-1}\n');
  t.match(await client.next(), { ok: false, error: /\(got -1\)/ });
  // 200 KiB without a newline, in pieces, then the newline: one error, memory not kept.
  for (let i = 0; i < 200; i++) client.send(Buffer.alloc(1024, 0x41));
  client.send('\n');
  t.match(await client.next(), { ok: false, error: 'request line is longer than 65536 bytes' });
  // Several requests in one write are answered in order.
  client.send('{"cmd":"pause"}\n{"cmd":"status"}\n{"cmd":"resume"}\n');
  t.match(await client.next(), { ok: true, status: { state: 'paused' } });
  t.match(await client.next(), { ok: true, status: { state: 'paused' } });
  t.match(await client.next(), { ok: true, status: { state: 'migrating' } });
  t.same(migration.calls, ['pause', 'resume']);
});

t.test('server: a control that throws is an error reply, not a crash', async (t) => {
  const socketPath = tempSocket(t);
  const migration = new SimulatedMigration();
  migration.pause = () => {
    throw new Error('pause exploded');
  };
  const server = new ControlServer(migration, log);
  await server.listen(socketPath);
  t.teardown(() => server.close());
  t.same(await sendControl(socketPath, { cmd: 'pause' }, 2000), { ok: false, error: 'pause exploded' });
  t.match(await sendControl(socketPath, { cmd: 'status' }, 2000), { ok: true });
});

t.test('server: a client that vanishes mid-request does not hurt the server', async (t) => {
  const socketPath = tempSocket(t);
  const server = new ControlServer(new SimulatedMigration(), log);
  await server.listen(socketPath);
  t.teardown(() => server.close());
  const socket = net.connect(socketPath);
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('{"cmd":"status"}\n{"cmd":"sta');
  socket.destroy();
  t.match(await sendControl(socketPath, { cmd: 'status' }, 2000), { ok: true });
});

t.test('listen: replaces a stale socket, refuses a live one or a non-socket', async (t) => {
  const socketPath = tempSocket(t);
  // A stale socket file: bound, then its process "died" without removing it.
  const stale = net.createServer();
  await new Promise<void>((resolve) => stale.listen(socketPath, resolve));
  // Closing a server removes its file; make a stale one by hard-linking it first.
  fs.linkSync(socketPath, socketPath + '.keep');
  await new Promise<void>((resolve) => stale.close(() => resolve()));
  fs.renameSync(socketPath + '.keep', socketPath);
  t.ok(fs.lstatSync(socketPath).isSocket(), 'stale socket file is there');
  await t.rejects(sendControl(socketPath, { cmd: 'status' }, 2000), {
    message: `no ferry dest is listening on ${socketPath} (ECONNREFUSED: stale socket file)`,
  });

  const first = new ControlServer(new SimulatedMigration(), log);
  await first.listen(socketPath);
  t.match(await sendControl(socketPath, { cmd: 'status' }, 2000), { ok: true }, 'listening over the stale file');

  const second = new ControlServer(new SimulatedMigration(), log);
  await t.rejects(second.listen(socketPath), {
    message: `control socket: ${socketPath} is in use by a running process`,
  });
  t.match(await sendControl(socketPath, { cmd: 'status' }, 2000), { ok: true }, 'the first one still answers');

  await first.close();
  t.notOk(fs.existsSync(socketPath), 'close removes the socket file');

  fs.writeFileSync(socketPath, 'precious');
  await t.rejects(second.listen(socketPath), { message: /exists and is not a socket; refusing to replace it/ });
  t.equal(fs.readFileSync(socketPath, 'utf8'), 'precious');
});

t.test('client: clear errors when nobody listens or nobody answers', async (t) => {
  const socketPath = tempSocket(t);
  const err = await sendControl(socketPath, { cmd: 'status' }, 2000).catch((e: Error) => e);
  t.type(err, ControlUnreachableError);
  t.equal((err as Error).message, `no ferry dest is listening on ${socketPath} (ENOENT)`);

  // A server that accepts and never answers.
  const silent = net.createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(socketPath, resolve));
  t.teardown(() => silent.close());
  const started = Date.now();
  await t.rejects(sendControl(socketPath, { cmd: 'status' }, 150), {
    message: `ferry dest on ${socketPath} did not answer within 150 ms`,
  });
  t.ok(Date.now() - started < 10_000, 'gave up rather than waiting on');
});

t.test('server: a staging directory left by a start killed while listening is removed, a live one kept', async (t) => {
  const socketPath = tempSocket(t);
  const dir = path.dirname(socketPath);
  const dead = spawnSync('true').pid!; // a pid that has exited
  const stale = path.join(dir, `.control.sock.staging-${dead}-AbC123`);
  const live = path.join(dir, `.control.sock.staging-${process.ppid}-XyZ789`);
  const other = path.join(dir, `.other.sock.staging-${dead}-QqQ000`);
  for (const d of [stale, live, other]) fs.mkdirSync(d, { mode: 0o700 });
  fs.writeFileSync(path.join(stale, 'control.sock'), '');
  const server = new ControlServer(new SimulatedMigration({ blocksTotal: 1 }), log);
  await server.listen(socketPath);
  t.teardown(() => server.close());
  t.notOk(fs.existsSync(stale), 'the dead start’s directory is gone');
  t.ok(fs.existsSync(live), 'a running start’s directory is kept');
  t.ok(fs.existsSync(other), 'another socket’s directory is kept');
  t.same(
    fs.readdirSync(dir).filter((n) => n.startsWith('.control.sock.staging-')),
    [path.basename(live)],
    'and this start left none of its own',
  );
});

t.test('server: the configured connection cap and idle timeout', async (t) => {
  const socketPath = tempSocket(t);
  const server = new ControlServer(new SimulatedMigration({ blocksTotal: 10 }), log, undefined, {
    maxConnections: 1,
    idleTimeoutMs: 200,
  });
  await server.listen(socketPath);
  t.teardown(() => server.close());
  const idle = net.connect(socketPath);
  await new Promise((resolve) => idle.once('connect', resolve));
  const idleClosed = new Promise((resolve) => idle.once('close', resolve));
  // The one connection allowed is taken: another is closed at once, unanswered.
  await t.rejects(sendControl(socketPath, { cmd: 'status' }, 10_000), 'a second connection is refused');
  await idleClosed;
  t.pass('the idle connection was closed by the server');
  t.match(await sendControl(socketPath, { cmd: 'status' }, 10_000), { ok: true }, 'and its place is free again');
});
