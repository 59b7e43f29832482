/** Process edges of `ferry serve`: signals, configuration errors. */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startFerryServe } from './helpers/ferry-serve';
import { NBD_CMD, connectSocket, handshake, readSimpleReply, requestHeader } from './helpers/raw-nbd-client';
import { run } from './helpers/run';
import { tempDir } from './helpers/temp-dir';

const MiB = 1 << 20;
const FERRY_BIN = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

t.test('SIGTERM with writes in flight: every acknowledged write is in the image, exit 0', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'term.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 32 * MiB);
  const ferry = await startFerryServe(t, ['--image', image]);
  const socket = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => socket.destroy());
  socket.on('error', () => {}); // requests still unsent when the server hangs up fail with EPIPE
  await handshake(socket);

  const WRITES = 256;
  const LENGTH = 64 * 1024;
  for (let i = 0; i < WRITES; i++) {
    socket.write(Buffer.concat([requestHeader(NBD_CMD.write, BigInt(i), i * LENGTH, LENGTH), Buffer.alloc(LENGTH, i)]));
  }
  const acknowledged: number[] = [];
  const failed: bigint[] = [];
  const first = await readSimpleReply(socket);
  t.equal(first.error, 0);
  acknowledged.push(Number(first.cookie));
  process.kill(ferry.pid, 'SIGTERM');
  for (;;) {
    const reply = await readSimpleReply(socket).catch(() => null);
    if (reply === null) break; // the server closed the connection
    if (reply.error === 0) acknowledged.push(Number(reply.cookie));
    else failed.push(reply.cookie);
  }
  t.same(failed, [], 'no write failed');
  t.equal(await ferry.exited, 0, 'exit code 0');
  t.match(ferry.stderr(), /"msg":"stopped"/);
  t.ok(acknowledged.length >= 1, `${acknowledged.length} writes were acknowledged`);
  const data = fs.readFileSync(image);
  const missing = acknowledged.filter(
    (i) => !data.subarray(i * LENGTH, (i + 1) * LENGTH).every((b) => b === (i & 0xff)),
  );
  t.same(missing, [], 'every acknowledged write is in the image');
});

t.test('SIGINT while idle exits 0', async (t) => {
  const image = path.join(tempDir(t), 'int.img');
  fs.writeFileSync(image, Buffer.alloc(MiB));
  const ferry = await startFerryServe(t, ['--image', image]);
  t.equal(await ferry.stop('SIGINT'), 0);
});

t.test('a config file with an unknown key fails, naming the key', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'cfg.img');
  fs.writeFileSync(image, Buffer.alloc(MiB));
  const config = path.join(dir, 'ferry.toml');
  fs.writeFileSync(config, `[serve]\nimage = ${JSON.stringify(image)}\nlisten = "127.0.0.1:0"\nbogus_knob = 3\n`);
  const result = await run(process.execPath, [FERRY_BIN, 'serve', '--config', config], { timeoutMs: 120_000 });
  t.not(result.code, 0, 'exits non-zero');
  t.match(result.stderr, /serve\.bogus_knob/, 'the message names the key');
  t.notMatch(result.stderr, /"msg":"serving"/, 'it never started serving');

  const badValue = path.join(dir, 'bad.toml');
  fs.writeFileSync(badValue, `[serve]\nimage = ${JSON.stringify(image)}\nlisten = "nowhere"\n`);
  const bad = await run(process.execPath, [FERRY_BIN, 'serve', '--config', badValue], { timeoutMs: 120_000 });
  t.not(bad.code, 0);
  t.match(bad.stderr, /serve\.listen/);

  const good = path.join(dir, 'good.toml');
  fs.writeFileSync(good, `[serve]\nimage = ${JSON.stringify(image)}\nexport = "from-config"\n`);
  const ferry = await startFerryServe(t, ['--config', good]);
  t.match(ferry.stderr(), /"export":"from-config"/, 'a valid config file is used');
  t.equal(await ferry.stop(), 0);
});
