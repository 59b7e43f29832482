/**
 * What a destination leaves on disk and on the network: its image and state
 * owner-only (or as dest.file_mode says) whatever the umask, its control
 * socket 0600 with no staging left behind, metrics on loopback for a bare
 * port, and export names that look like paths never opening files.
 */
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { loadConfig } from '../src/config/load';
import { NbdClient } from '../src/nbd/client';
import { encodePreamble, FrameDecoder } from '../src/wire/frame-codec';
import { decodeRefuse, encodeHello } from '../src/wire/messages';
import { MessageType, Role, WIRE_VERSION } from '../src/wire/protocol';

const mode = (p: string): number => fs.lstatSync(p).mode & 0o777;

t.test('a destination creates its files owner-only, whatever the umask', async (t) => {
  const dir = tempDir(t, 'ferry-modes-');
  const sourcePath = path.join(dir, 'source.img');
  fs.writeFileSync(sourcePath, Buffer.alloc(1 << 20, 1));
  const old = process.umask(0); // the children inherit it: nothing may rely on it
  t.teardown(() => void process.umask(old));
  const src = await startFerry(t, ['serve', '--image', sourcePath, '--read-only', '--listen', '127.0.0.1:0']);
  const url = `nbd://127.0.0.1:${servingPort(src)}/source.img`;

  const image = path.join(dir, 'dest.img');
  const control = path.join(dir, 'ctl.sock');
  const dest = await startFerry(t, [
    ...['dest', '--source', url, '--image', image, '--listen', '127.0.0.1:0', '--control', control],
    ...['--metrics', '0'],
  ]);
  t.equal(mode(image), 0o600, 'image 0600');
  t.equal(mode(`${image}.ferry-state`), 0o600, 'state 0600');
  t.ok(fs.lstatSync(control).isSocket());
  t.equal(mode(control), 0o600, 'control socket 0600');
  t.same(
    fs.readdirSync(dir).filter((f) => f.startsWith('.ctl.sock.staging-')),
    [],
    'no staging directory left',
  );
  const metrics = await dest.waitForLog('metrics listening');
  t.match(metrics.address, { host: '127.0.0.1' }, 'a bare metrics port binds loopback');
  await dest.stop();

  const configFile = path.join(dir, 'ferry.toml');
  fs.writeFileSync(configFile, '[dest]\nfile_mode = "0640"\n');
  const shared = path.join(dir, 'shared.img');
  const d2 = await startFerry(t, [
    ...['dest', '--source', url, '--image', shared, '--listen', '127.0.0.1:0', '--config', configFile],
  ]);
  t.equal(mode(shared), 0o640, 'dest.file_mode applies to the image');
  t.equal(mode(`${shared}.ferry-state`), 0o640, 'and to the state');
  await d2.stop();
});

t.test('file_mode and metrics are checked', async (t) => {
  t.equal(loadConfig(undefined, { 'dest.metrics': '9100' }).dest.metrics, '127.0.0.1:9100');
  t.equal(loadConfig(undefined, { 'dest.metrics': '[::]:9100' }).dest.metrics, '[::]:9100');
  t.throws(() => loadConfig(undefined, { 'dest.file_mode': '0666' }), /dest\.file_mode.*others write/);
  t.throws(() => loadConfig(undefined, { 'dest.file_mode': 'rw' }), /dest\.file_mode.*octal/);
});

t.test('export names that look like paths open no file', async (t) => {
  const dir = tempDir(t, 'ferry-names-');
  fs.mkdirSync(path.join(dir, 'served'));
  const image = path.join(dir, 'served', 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(1 << 20));
  fs.writeFileSync(path.join(dir, 'secret.img'), Buffer.alloc(1 << 20, 0x5a)); // what "../secret.img" would name
  const serve = await startFerry(t, ['serve', '--image', image, '--listen', '127.0.0.1:0']);
  for (const name of ['../secret.img', path.join(dir, 'secret.img'), '/etc/passwd']) {
    await t.rejects(
      NbdClient.connect({ host: '127.0.0.1', port: servingPort(serve) }, { exportName: name }),
      `NBD export "${name}" is refused`,
    );
  }
  await serve.stop();

  const src = await startFerry(t, ['source', '--image', image, '--listen', '127.0.0.1:0', '--insecure']);
  for (const name of ['../secret.img', '/etc/passwd']) {
    const socket = net.connect(servingPort(src), '127.0.0.1');
    const decoder = new FrameDecoder();
    const reason = await new Promise<string>((resolve, reject) => {
      socket.on('data', (b: Buffer) => {
        decoder.push(b);
        for (let e = decoder.next(); e; e = decoder.next()) {
          if (e.kind === 'frame' && e.frame.type === MessageType.Refuse) {
            const r = decodeRefuse(e.frame.meta);
            resolve(typeof r === 'string' ? r : r.reason);
          } else if (e.kind === 'frame') reject(new Error(`answered with frame type ${e.frame.type}`));
        }
      });
      socket.on('error', reject);
      const hello = encodeHello({
        version: WIRE_VERSION,
        role: Role.Urgent,
        blockSize: 4096,
        maxBatchBlocks: 64,
        encodings: [0],
        exportName: name,
        session: 's',
        identity: '',
      });
      socket.write(Buffer.concat([encodePreamble(), hello]));
    });
    socket.destroy();
    t.match(reason, /unknown export/, `wire export "${name}" is refused`);
  }
  await src.stop();
});
