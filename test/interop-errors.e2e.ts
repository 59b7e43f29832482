/**
 * Requests and handshakes the server must refuse, and clients that misbehave:
 * each is answered (or hung up on) without disturbing anyone else.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startFerryServe } from './helpers/ferry-serve';
import { PY_ATTEMPT, pythonWithNbd, runNbdPython } from './helpers/python-nbd';
import {
  NBD_CMD,
  connectSocket,
  handshake,
  readExactly,
  readSimpleReply,
  requestHeader,
  waitForClose,
} from './helpers/raw-nbd-client';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';

const MiB = 1 << 20;
const EINVAL = 22;

function requirePythonNbd(t: { plan(n: number, comment?: string): void }): boolean {
  if (pythonWithNbd()) return true;
  t.plan(0, 'skipped: python3-libnbd not installed');
  return false;
}

t.test('libnbd without strict checks: out of range, oversized, unknown flags', async (t) => {
  if (!requirePythonNbd(t)) return;
  const dir = tempDir(t);
  const image = path.join(dir, 'edge.img');
  const content = writePatternFile(image, 4 * MiB, 9);
  const ferry = await startFerryServe(t, ['--image', image]);
  const got = await runNbdPython<Record<string, string>>(
    ferry.uri(),
    `${PY_ATTEMPT}
h.set_strict_mode(0)
h.connect_uri(URI)
size = h.get_size()
out = {}
out['read_past_end'] = attempt(lambda: h.pread(4096, size - 1024))
out['read_beyond'] = attempt(lambda: h.pread(512, size + 4096))
out['write_past_end'] = attempt(lambda: h.pwrite(b'x' * 4096, size - 1024))
out['trim_past_end'] = attempt(lambda: h.trim(8192, size - 4096))
out['zero_past_end'] = attempt(lambda: h.zero(8192, size - 4096))
out['read_oversized'] = attempt(lambda: h.pread(33 << 20, 0))
out['write_oversized'] = attempt(lambda: h.pwrite(b'y' * (33 << 20), 0))
out['read_unknown_flag'] = attempt(lambda: h.pread(512, 0, 1 << 12))
out['write_unknown_flag'] = attempt(lambda: h.pwrite(b'z' * 512, 0, 1 << 9))
out['zero_bad_flag'] = attempt(lambda: h.zero(512, 0, nbd.CMD_FLAG_DF))
out['read_at_end'] = attempt(lambda: h.pread(1024, size - 1024))
out['still_serving'] = h.pread(16, 0).hex()
print(json.dumps(out))
`,
  );
  t.same(got, {
    read_past_end: 'EINVAL',
    read_beyond: 'EINVAL',
    write_past_end: 'ENOSPC',
    trim_past_end: 'ENOSPC',
    zero_past_end: 'ENOSPC',
    read_oversized: 'EINVAL',
    write_oversized: 'EOVERFLOW',
    read_unknown_flag: 'EINVAL',
    write_unknown_flag: 'EINVAL',
    zero_bad_flag: 'EINVAL',
    read_at_end: 'ok',
    still_serving: content.subarray(0, 16).toString('hex'),
  });
  t.ok(fs.readFileSync(image).equals(content), 'no refused request changed the image');
});

t.test('unknown export: refused in the handshake, the right one still found', async (t) => {
  if (!requirePythonNbd(t)) return;
  const image = path.join(tempDir(t), 'named.img');
  writePatternFile(image, MiB, 2);
  const ferry = await startFerryServe(t, ['--image', image]);
  const got = await runNbdPython<Record<string, unknown>>(
    ferry.uri(),
    `${PY_ATTEMPT}
h.set_opt_mode(True)
h.connect_uri(URI)
out = {}
h.set_export_name('nosuch')
out['info_nosuch'] = attempt(lambda: h.opt_info())
names = []
h.opt_list(lambda name, description: names.append(name) or 0)
out['listed'] = names
h.set_export_name('named.img')
h.opt_go()
out['size'] = h.get_size()
print(json.dumps(out))
`,
  );
  t.same(got, { info_nosuch: 'ENOENT', listed: ['named.img'], size: MiB });
});

t.test('read-only: writes, trims and zeroes are refused with EPERM', async (t) => {
  if (!requirePythonNbd(t)) return;
  const image = path.join(tempDir(t), 'ro.img');
  const content = writePatternFile(image, 2 * MiB, 4);
  const ferry = await startFerryServe(t, ['--image', image, '--read-only']);
  const got = await runNbdPython<Record<string, unknown>>(
    ferry.uri(),
    `${PY_ATTEMPT}
h.set_strict_mode(0)
h.connect_uri(URI)
out = {'read_only': h.is_read_only(), 'can_trim': h.can_trim()}
out['write'] = attempt(lambda: h.pwrite(b'w' * 4096, 0))
out['write_fua'] = attempt(lambda: h.pwrite(b'w' * 4096, 0, nbd.CMD_FLAG_FUA))
out['trim'] = attempt(lambda: h.trim(4096, 0))
out['zero'] = attempt(lambda: h.zero(4096, 0))
out['read'] = h.pread(8, 4096).hex()
out['flush'] = attempt(lambda: h.flush())
print(json.dumps(out))
`,
  );
  t.same(got, {
    read_only: 1,
    can_trim: 0,
    write: 'EPERM',
    write_fua: 'EPERM',
    trim: 'EPERM',
    zero: 'EPERM',
    read: content.subarray(4096, 4104).toString('hex'),
    flush: 'ok',
  });
  t.ok(fs.readFileSync(image).equals(content), 'the image is unchanged');
});

t.test('raw socket: unknown command is EINVAL and the connection goes on', async (t) => {
  const image = path.join(tempDir(t), 'raw.img');
  const content = writePatternFile(image, MiB, 6);
  const ferry = await startFerryServe(t, ['--image', image]);
  const socket = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => socket.destroy());
  t.equal(await handshake(socket), MiB);
  socket.write(requestHeader(99, 1n, 0, 512));
  const unknown = await readSimpleReply(socket);
  t.match(unknown, { error: EINVAL, cookie: 1n });
  socket.write(requestHeader(NBD_CMD.read, 2n, 100, 300));
  const read = await readSimpleReply(socket, 300);
  t.match(read, { error: 0, cookie: 2n });
  t.ok(read.data.equals(content.subarray(100, 400)), 'read after the unknown command returns the right bytes');
});

t.test('garbage in the handshake or transmission closes that connection only', async (t) => {
  const image = path.join(tempDir(t), 'junk.img');
  const content = writePatternFile(image, MiB, 8);
  const ferry = await startFerryServe(t, ['--image', image]);

  const beforeGreeting = await connectSocket(ferry.host, ferry.port);
  beforeGreeting.write(Buffer.from('GET / HTTP/1.1\r\nHost: ferry\r\n\r\n'));
  await waitForClose(beforeGreeting);
  t.pass('junk instead of client flags and options: closed');

  const badOption = await connectSocket(ferry.host, ferry.port);
  await readExactly(badOption, 18);
  badOption.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.alloc(64, 0xee)]));
  await waitForClose(badOption);
  t.pass('bad option magic: closed');

  const badRequest = await connectSocket(ferry.host, ferry.port);
  await handshake(badRequest);
  badRequest.write(Buffer.alloc(28, 0x5a));
  await waitForClose(badRequest);
  t.pass('bad request magic: closed');

  const good = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => good.destroy());
  await handshake(good);
  good.write(requestHeader(NBD_CMD.read, 9n, 4096, 4096));
  const reply = await readSimpleReply(good, 4096);
  t.ok(reply.data.equals(content.subarray(4096, 8192)), 'another client is still served');
});

t.test('clients that vanish mid-request leave the server serving', async (t) => {
  const image = path.join(tempDir(t), 'vanish.img');
  const content = writePatternFile(image, 8 * MiB, 10);
  const ferry = await startFerryServe(t, ['--image', image, '--log-level', 'debug']);

  const halfWrite = await connectSocket(ferry.host, ferry.port);
  await handshake(halfWrite);
  halfWrite.write(requestHeader(NBD_CMD.write, 1n, 0, MiB));
  // destroy() drops what is still buffered: hand the half payload to the kernel first.
  await new Promise((resolve) => halfWrite.write(Buffer.alloc(MiB / 2, 0xdd), resolve));
  halfWrite.destroy();

  const headerOnly = await connectSocket(ferry.host, ferry.port);
  await handshake(headerOnly);
  await new Promise((resolve) => headerOnly.write(requestHeader(NBD_CMD.write, 2n, 0, 4096).subarray(0, 20), resolve));
  headerOnly.destroy();

  const manyReads = await connectSocket(ferry.host, ferry.port);
  await handshake(manyReads);
  for (let i = 0; i < 64; i++) manyReads.write(requestHeader(NBD_CMD.read, BigInt(i), i * 65536, 65536));
  manyReads.destroy(); // replies in flight go nowhere

  await until(() => ferry.logCount('connection closed') >= 3, 'the server has seen the three clients go');
  const good = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => good.destroy());
  await handshake(good);
  good.write(requestHeader(NBD_CMD.read, 3n, 0, 8192));
  const reply = await readSimpleReply(good, 8192);
  t.ok(reply.data.equals(content.subarray(0, 8192)), 'the half-sent write was not applied; reads still served');
  t.notMatch(ferry.stderr(), /"level":50|unexpected/, 'no error logged');
  t.equal(await ferry.stop(), 0, 'and it still shuts down cleanly');
});
