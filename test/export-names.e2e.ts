/**
 * Export names a client sends are names, never paths: `ferry serve`,
 * `ferry dest` and `ferry daemon` (which serves many disks by name) answer
 * path-like names (`../x`, `/etc/passwd`, `a/b`, NUL bytes, very long ones)
 * with "unknown export" and go on serving, and none of those names reaches
 * the file system: every file system call of the daemon while they are asked
 * is traced (strace) and none names them.
 */
import t, { Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { startFerryServe } from './helpers/ferry-serve';
import { ferrydConfig, nbdPort, startFerryd } from './helpers/ferryd';
import { connectSocket, handshake, readExactly, waitForClose } from './helpers/raw-nbd-client';
import { tempDir, writePatternFile } from './helpers/temp-dir';

const hasStrace = spawnSync('strace', ['-V']).status === 0;
const OPT = { exportName: 1, info: 6, go: 7 };
const REP_ERR_UNKNOWN = 2 ** 31 + 6;
const REP_ERR_INVALID = 2 ** 31 + 3;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

/** Each hostile name carries a token (where it can), so a trace line naming it is found whatever the directory. */
function hostileNames(token: string): string[] {
  return [
    `../${token}`,
    `../../../../../../tmp/${token}`,
    '/etc/passwd',
    `/etc/${token}`,
    `a/${token}`,
    `${token}/../../x`,
    `nul-${token}\0/etc/passwd`,
    `\0${token}`,
    `long-${token}-${'a/'.repeat(2000)}`,
    `${token}-${'b'.repeat(4090)}`,
    `./${token}`,
    `~/${token}`,
  ];
}

function option(type: number, data: Buffer): Buffer {
  const header = Buffer.alloc(16);
  header.write('IHAVEOPT', 0, 'latin1');
  header.writeUInt32BE(type, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}

/** INFO/GO data: the name's length, the name, no information requests. */
function infoData(name: Buffer): Buffer {
  const b = Buffer.alloc(4 + name.length + 2);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  return b;
}

/** The reply types of one option until its last (ACK or an error). */
async function replies(s: net.Socket): Promise<number[]> {
  const types: number[] = [];
  for (;;) {
    const h = await readExactly(s, 20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
    const type = h.readUInt32BE(12);
    const length = h.readUInt32BE(16);
    if (length) await readExactly(s, length);
    types.push(type);
    if (type === 1 || type >= 2 ** 31) return types; // ACK or an error ends the option
  }
}

/** Asks for `name` by NBD_OPT_INFO, NBD_OPT_GO and NBD_OPT_EXPORT_NAME; each must be refused. */
async function askFor(t: Test, port: number, name: string): Promise<void> {
  const raw = Buffer.from(name, 'utf8');
  const s = await connectSocket('127.0.0.1', port);
  s.on('error', () => undefined);
  try {
    const greeting = await readExactly(s, 18);
    t.equal(greeting.toString('latin1', 0, 8), 'NBDMAGIC');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0);
    s.write(flags);
    for (const type of [OPT.info, OPT.go]) {
      s.write(option(type, infoData(raw)));
      const got = await replies(s);
      const last = got[got.length - 1];
      t.ok(
        last === REP_ERR_UNKNOWN || last === REP_ERR_INVALID,
        `${type === OPT.info ? 'INFO' : 'GO'} ${JSON.stringify(name.slice(0, 40))}… refused (0x${last.toString(16)})`,
      );
    }
    // NBD_OPT_EXPORT_NAME cannot be refused in words: the server closes the connection.
    s.write(option(OPT.exportName, raw));
    await waitForClose(s);
  } finally {
    s.destroy();
  }
}

/** Traces every file system call of `pid` (and its threads) while `during` runs; returns the trace. */
async function traceFiles(t: Test, pid: number, during: () => Promise<void>): Promise<string> {
  const log = path.join(tempDir(t, 'ferry-export-names-trace-'), 'trace');
  // Calls that take a path (open, stat, mkdir, rename, unlink…), and accepts to show the trace saw the clients;
  // not reads of the sockets, which would show the names as data.
  const strace = spawn(
    'strace',
    ['-f', '-s', '8192', '-e', 'trace=%file,accept,accept4', '-o', log, '-p', String(pid)],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  // strace says "Process N attached" for each of the daemon's threads once it traces them.
  await new Promise<void>((resolve, reject) => {
    let said = '';
    strace.stderr!.on('data', (chunk: Buffer) => {
      said += chunk.toString();
      if (said.includes(`Process ${pid} attached`)) resolve();
    });
    strace.once('exit', (code) => reject(new Error(`strace exited with ${code}: ${said}`)));
  });
  try {
    await during();
  } finally {
    const exited = new Promise((r) => strace.once('exit', r));
    strace.kill('SIGINT');
    await exited;
  }
  return fs.readFileSync(log, 'utf8');
}

async function check(t: Test, pid: number, port: number, validName: string | null): Promise<void> {
  const token = `ferry-probe-${crypto.randomBytes(6).toString('hex')}`;
  const trace = await traceFiles(t, pid, async () => {
    for (const name of hostileNames(token)) await askFor(t, port, name);
  });
  const accepts = trace.split('\n').filter((l) => /accept4?\(/.test(l) && !/EAGAIN/.test(l)).length;
  t.ok(accepts >= hostileNames(token).length, `the trace saw the daemon accept every client (${accepts} accepts)`);
  const naming = trace.split('\n').filter((l) => l.includes(token) || /"\/etc\/passwd"/.test(l));
  t.same(naming, [], 'no file system call names an export asked for');
  t.same(
    fs.readdirSync('/tmp').filter((f) => f.includes(token)),
    [],
    'nothing made in /tmp',
  );
  if (validName !== null) {
    const s = await connectSocket('127.0.0.1', port);
    t.ok((await handshake(s, validName)) > 0, `still serves "${validName}"`);
    s.destroy();
  }
  t.doesNotThrow(() => process.kill(pid, 0), 'still running');
}

t.test('ferry serve', { skip: !hasStrace && 'needs strace' }, async (t) => {
  const dir = tempDir(t, 'ferry-export-names-');
  const image = path.join(dir, 'disk.img');
  writePatternFile(image, 1 << 20, 1);
  const serve = await startFerryServe(t, ['--image', image, '--read-only']);
  await check(t, serve.pid, serve.port, 'disk.img');
});

t.test('ferry dest', { skip: !hasStrace && 'needs strace' }, async (t) => {
  const dir = tempDir(t, 'ferry-export-names-');
  const source = path.join(dir, 'source.img');
  writePatternFile(source, 1 << 20, 2);
  const serve = await startFerryServe(t, ['--image', source, '--read-only']);
  const dest = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', serve.uri(), '--image', path.join(dir, 'dest.img')],
    ...['--listen', '127.0.0.1:0'],
  ]);
  await check(t, dest.child.pid!, servingPort(dest), 'dest.img');
});

t.test('ferry daemon', { skip: !hasStrace && 'needs strace' }, async (t) => {
  const dir = tempDir(t, 'ferry-export-names-');
  const d = ferrydConfig(dir);
  const daemon = await startFerryd(t, d);
  await check(t, daemon.child.pid!, nbdPort(daemon), null);
});
