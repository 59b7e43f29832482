/**
 * The [source] listener keys on reload: a new address and a new pre-shared
 * key take effect for new connections while a destination already copying
 * goes on over its open connections to the end; a key that needs a restart
 * (deflate_level) is named in the reload's answer and the log, with why; a
 * new address that cannot be bound (SIGHUP) leaves the listener where it
 * was, and says so.
 */
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { CodecPool } from '../src/pool';
import { readPsk } from '../src/wire/auth';
import type { SourcesReport } from '../src/daemon/daemon-sources';
import { ctlStatus, ferryCtl, freePort, startFerry } from './helpers/ferry-daemon';
import { ctl, ferrydConfig, startFerryd } from './helpers/ferryd';
import { run } from './helpers/run';
import { tempDir, writePatternFile } from './helpers/temp-dir';
import { until } from './helpers/until';
import { openWireUpstream } from './helpers/wire-source';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');
const DISK_BYTES = 4 << 20;
const BS = 4096;

interface ReloadAnswer {
  applied: string[];
  notApplied: Array<{ key: string; reason: string }>;
}

t.test('listener keys on reload: applied for new connections, open ones go on', async (t) => {
  const dir = tempDir(t, 'ferryd-reload-');
  const [key1, key2] = [path.join(dir, 'one.psk'), path.join(dir, 'two.psk')];
  for (const k of [key1, key2]) t.equal((await run(process.execPath, [FERRY, 'keygen', '--psk', k])).code, 0);
  const image = path.join(dir, 'img.img');
  const content = writePatternFile(image, DISK_BYTES, 3);
  const [port1, port2] = [await freePort(), await freePort()];
  const section = (port: number, psk: string, extra = ''): string =>
    `[source]\nlisten = "127.0.0.1:${port}"\npsk_file = ${JSON.stringify(psk)}\n${extra}\n` +
    `[[source.export]]\nname = "img"\nimage = ${JSON.stringify(image)}\n`;
  const d = ferrydConfig(dir, {}, section(port1, key1));
  const daemon = await startFerryd(t, d);
  t.equal(daemon.serving.source, `127.0.0.1:${port1}`);

  // A destination copying slowly (128 s for the image) over the first address and key.
  const destImage = path.join(dir, 'dest.img');
  const destControl = path.join(dir, 'dest.sock');
  await startFerry(t, [
    ...['dest', '--source', `ferry://127.0.0.1:${port1}/img`, '--image', destImage, '--listen', '127.0.0.1:0'],
    ...['--control', destControl, '--psk-file', key1, '--rate', '32k', '--cutover-at-start'],
  ]);
  await until(async () => (await ctlStatus(destControl)).blocksHeld > 0, 'the destination copies', 60_000, 100);

  // Everything but the export moves: address, key, timeout, cap, codec; deflate_level needs a restart.
  fs.writeFileSync(
    d.config,
    fs
      .readFileSync(d.config, 'utf8')
      .replace(
        section(port1, key1),
        section(port2, key2, 'handshake_timeout_ms = 5000\nmax_connections = 32\ncodec = "lz4"\ndeflate_level = 3\n'),
      ) + '\n[nbd]\nmax_connections = 10\n',
  );
  const answered = await ferryCtl(d.control, 'reload', '--json');
  t.not((await ctlStatus(destControl)).phase, 'complete', 'the destination was still copying at the reload');
  t.equal(answered.code, 0, answered.stderr);
  const answer = JSON.parse(answered.stdout) as { reload: ReloadAnswer; sources: SourcesReport };
  t.same(
    [...answer.reload.applied].sort(),
    ['source.codec', 'source.handshake_timeout_ms', 'source.listen', 'source.max_connections', 'source.psk_file'],
    'the keys a running daemon can take are applied',
  );
  t.same(
    answer.reload.notApplied.map((n) => n.key),
    ['nbd.max_connections', 'source.deflate_level'],
    'and those it cannot are named',
  );
  t.match(answer.reload.notApplied[0].reason, /NBD listener's limits.*restart the daemon/);
  t.match(answer.reload.notApplied[1].reason, /codec pool.*restart the daemon/);
  t.equal(answer.sources.listen, `127.0.0.1:${port2}`, 'the listener is at its new address');
  const logged = await daemon.waitForLog('config key not applied');
  t.equal(logged.key, 'nbd.max_connections', 'each is logged');

  const text = await ferryCtl(d.control, 'reload');
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /not applied: source\.deflate_level: .*restart/, 'reported again while it differs');

  const pool = new CodecPool({ workers: 1 });
  t.teardown(() => pool.close());
  const open = (port: number, key: Buffer) =>
    openWireUpstream(`ferry://127.0.0.1:${port}/img`, { kind: 'psk', key, source: 'test', openFile: false }, pool, {
      blockSize: BS,
      maxAttempts: 1,
    });
  const refusedAt = (port: number): Promise<string> =>
    new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve('connected');
      });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
  t.equal(await refusedAt(port1), 'ECONNREFUSED', 'the old address takes no new connection');
  await t.rejects(open(port2, readPsk(key1).key), /the source refused the pre-shared key/, 'the old key is refused');
  const up = await open(port2, readPsk(key2).key);
  t.equal(up.size, DISK_BYTES, 'the new key and address serve the export');
  await up.close();

  await t.test('a key file rewritten in place is taken by a reload', async (t) => {
    const before = readPsk(key2).key;
    const rotated = path.join(dir, 'rotated.psk');
    t.equal((await run(process.execPath, [FERRY, 'keygen', '--psk', rotated])).code, 0);
    fs.renameSync(rotated, key2);
    const reload = (await ctl(d, { cmd: 'reload' })).reload as ReloadAnswer;
    t.ok(reload.applied.includes('source.psk_file'), 'the rewritten key is applied');
    await t.rejects(open(port2, before), /the source refused the pre-shared key/, 'the old bytes are refused');
    const rotatedUp = await open(port2, readPsk(key2).key);
    t.equal(rotatedUp.size, DISK_BYTES, 'the new bytes are accepted');
    await rotatedUp.close();
  });

  await t.test('an address that cannot be bound leaves the listener where it was (SIGHUP)', async (t) => {
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    t.teardown(() => new Promise<void>((resolve) => squatter.close(() => resolve())));
    const taken = (squatter.address() as net.AddressInfo).port;
    fs.writeFileSync(d.config, fs.readFileSync(d.config, 'utf8').replace(`127.0.0.1:${port2}`, `127.0.0.1:${taken}`));
    const reloads = daemon.logCount('config reloaded');
    daemon.child.kill('SIGHUP');
    await until(() => daemon.logCount('config reloaded') > reloads, 'the SIGHUP reload is done', 30_000, 20);
    const lines = daemon
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"config key not applied"') && l.endsWith('}'))
      .map((l) => JSON.parse(l) as { key: string; reason: string });
    const listen = lines.find((l) => l.key === 'source.listen');
    t.ok(listen, 'the listen key is logged as not applied');
    t.match(
      listen?.reason,
      new RegExp(`cannot listen on 127\\.0\\.0\\.1:${taken}: .*EADDRINUSE.*stays at 127\\.0\\.0\\.1:${port2}`),
    );
    t.equal(((await ctl(d, { cmd: 'sources' })) as unknown as SourcesReport).listen, `127.0.0.1:${port2}`);
    const again = await open(port2, readPsk(key2).key);
    t.equal(again.size, DISK_BYTES, 'the listener still serves at its address');
    await again.close();
  });

  // The destination that connected before the move copies to the end over its open connections.
  t.equal((await ferryCtl(destControl, 'rate', 'off')).code, 0);
  await until(async () => (await ctlStatus(destControl)).phase === 'complete', 'the copy is complete', 120_000, 100);
  const final = await ctlStatus(destControl);
  t.equal(final.reconnects, 0, 'its connections were never dropped');
  t.ok(fs.readFileSync(destImage).equals(content), 'and it holds the image');
});
