/**
 * What operators read: --log-file, connections at info with their peer,
 * and no Node warnings in a daemon's output across rate changes.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { ctlStatus, ferryCtl, servingPort, startFerry } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { NbdClient } from '../src/nbd/client';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const NODE_WARNING = /\(node:\d+\) \[?\w*\]? ?\w*Warning|MaxListenersExceeded/;

/** Resolves once `file` contains `text`, watching its directory (no polling). */
function waitForText(file: string, text: string, timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const content = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
      if (!content.includes(text)) return false;
      watcher.close();
      clearTimeout(timer);
      resolve(content);
      return true;
    };
    const watcher = fs.watch(path.dirname(file), () => void check());
    const timer = setTimeout(() => {
      watcher.close();
      reject(new Error(`${file} did not get "${text}" within ${timeoutMs} ms`));
    }, timeoutMs);
    check();
  });
}

t.test('--log-file: JSON lines in the file, nothing on stderr; NBD clients logged with their address', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, crypto.randomBytes(1 << 20));
  const logFile = path.join(dir, 'serve.log');
  const child = spawn(
    process.execPath,
    [FERRY, 'serve', '--image', image, '--listen', '127.0.0.1:0', '--log-file', logFile],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  t.teardown(() => void child.kill('SIGKILL'));

  const serving = JSON.parse((await waitForText(logFile, '"msg":"serving"')).trim().split('\n').pop()!);
  const port = Number(String(serving.address).split(':').pop());
  const vm = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'disk.img' });
  await vm.read(0, 4096);
  await vm.close();
  await waitForText(logFile, 'NBD client disconnected');
  child.kill('SIGTERM');
  t.equal(await exited, 0);
  t.equal(stderr, '', 'nothing on stderr');
  const records = fs
    .readFileSync(logFile, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const connected = records.find((r) => r.msg === 'NBD client connected');
  t.equal(connected?.level, 30, 'at info');
  t.match(String(connected?.peer), /^127\.0\.0\.1:\d+$/, 'with the peer address and port');
  t.ok(
    records.some((r) => r.msg === 'stopped'),
    'the last line is there',
  );
});

t.test('--log-file that cannot be opened is a clear runtime error', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(4096));
  const bad = path.join(dir, 'no', 'such', 'dir', 'x.log');
  const child = spawn(process.execPath, [FERRY, 'serve', '--image', image, '--log-file', bad], { stdio: 'pipe' });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const code = await new Promise((resolve) => child.on('close', resolve));
  t.equal(code, 1);
  t.match(stderr, `cannot open the log file ${bad}: ENOENT`);
});

t.test('no Node warnings in either daemon across rate changes; control clients logged', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, crypto.randomBytes(32 << 20));
  const source = await startFerry(t, [
    ...['source', '--image', image, '--listen', '127.0.0.1:0', '--insecure', '--workers', '1', '--codec', 'deflate'],
    ...['--state-dir', dir],
  ]);
  // One decoding worker and several streams: batches wait for room in the codec pool.
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, '[wire]\nworkers = 1\nbackground_streams = 4\n');
  const control = path.join(dir, 'ctl.sock');
  const dest = await startFerry(t, [
    ...['dest', '--config', config, '--source', `ferry://127.0.0.1:${servingPort(source)}/disk.img`],
    ...['--image', path.join(dir, 'dest.img'), '--listen', '127.0.0.1:0', '--insecure', '--control', control],
    ...['--rate', '256k', '--cutover-at-start'],
  ]);
  for (const rate of ['512k', '128k', '1M', 'off']) {
    const r = await ferryCtl(control, 'rate', rate);
    t.equal(r.code, 0, `rate ${rate}: ${r.stderr}`);
  }
  await dest.waitForLog(/^migration complete/, 120_000);
  t.equal((await ctlStatus(control)).state, 'complete');
  t.equal(await dest.stop(), 0);
  t.equal(await source.stop(), 0);
  t.notMatch(dest.stderr(), NODE_WARNING, 'no Node warning from the destination');
  t.notMatch(source.stderr(), NODE_WARNING, 'no Node warning from the source');
  t.match(dest.stderr(), /"level":30,[^\n]*"msg":"control client connected"/, 'control clients at info');
  t.match(
    source.stderr(),
    /"level":30,[^\n]*"peer":"127\.0\.0\.1:\d+"[^\n]*"msg":"destination connected"/,
    'wire peers at info',
  );
});
