/**
 * What an unauthenticated peer can cost `ferry source`: idle connections are
 * dropped after the handshake timeout (TLS or plain), connections over the
 * cap are refused at once, and a frame before HELLO is bounded by a few KiB,
 * not by the protocol's 64 MiB.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { startFerry, servingPort } from './helpers/ferry-daemon';
import { tempDir } from './helpers/temp-dir';
import { run } from './helpers/run';
import { encodeFrameHead, encodePreamble, FrameDecoder } from '../src/wire/frame-codec';
import { decodeRefuse } from '../src/wire/messages';
import { MessageType } from '../src/wire/protocol';
import { readPsk } from '../src/wire/auth';
import { connectWirePeer, helloFields } from './helpers/wire-peer';
import { until } from './helpers/until';

const FERRY = path.resolve(__dirname, '..', '..', 'bin', 'ferry.js');

async function source(t: Test, config: string, auth: string[]) {
  const dir = tempDir(t, 'ferry-dos-');
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, Buffer.alloc(1 << 20, 3));
  const configFile = path.join(dir, 'ferry.toml');
  fs.writeFileSync(configFile, `[source]\n${config}\n`);
  const src = await startFerry(t, [
    ...['source', '--image', image, '--listen', '127.0.0.1:0', '--workers', '1', '--config', configFile],
    ...auth,
  ]);
  return { src, dir, port: servingPort(src) };
}

function open(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

function closed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    s.resume(); // what it sends is not read here: the end of the stream must still be seen
    s.on('error', () => undefined);
    s.once('close', () => resolve());
  });
}

/** Resolves with the first `n` bytes the peer sends, or null if it closes first. */
function firstBytes(s: net.Socket, n: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const onData = (b: Buffer): void => {
      got = Buffer.concat([got, b]);
      if (got.length >= n) {
        s.off('data', onData);
        resolve(got);
      }
    };
    s.on('data', onData);
    s.on('error', () => undefined);
    s.once('close', () => resolve(null));
  });
}

t.test('idle connections are dropped after the handshake timeout; a destination still connects', async (t) => {
  const dir = tempDir(t, 'ferry-dos-key-');
  const key = path.join(dir, 'key');
  await run(process.execPath, [FERRY, 'keygen', '--psk', key]);
  const {
    src,
    port,
    dir: srcDir,
  } = await source(t, 'handshake_timeout_ms = 3000\nmax_connections = 80', ['--psk-file', key]);
  // One finishes TLS and then says nothing: the deadline covers TLS and HELLO together.
  const psk = readPsk(key).key;
  const quiet = tls.connect({
    host: '127.0.0.1',
    port,
    pskCallback: () => ({ psk, identity: 'ferry' }),
    ciphers: 'TLS_AES_128_GCM_SHA256',
    checkServerIdentity: () => undefined,
  });
  quiet.on('error', () => undefined);
  const quietClosed = closed(quiet);
  const secured = await new Promise<boolean>((resolve) => {
    quiet.once('secureConnect', () => resolve(true));
    quiet.once('close', () => resolve(false));
  });
  const idle = await Promise.all(Array.from({ length: 50 }, () => open(port)));
  await Promise.all([...idle.map(closed), quietClosed]);
  t.pass(`all 51 connections were closed by the source (the quiet one ${secured ? 'after' : 'before'} TLS)`);
  await src.waitForLog('refused a connection that failed authentication');
  if (secured) await src.waitForLog('disconnected a peer that did not authenticate in time');

  const dest = await startFerry(t, [
    ...['dest', '--source', `ferry://127.0.0.1:${port}/disk.img`, '--image', path.join(srcDir, 'dest.img')],
    ...['--listen', '127.0.0.1:0', '--psk-file', key],
  ]);
  t.ok(servingPort(dest) > 0, 'a legitimate destination connects afterwards');
  await dest.stop();
});

t.test('connections over the cap are refused at once', async (t) => {
  const { src, port } = await source(t, 'handshake_timeout_ms = 600000\nmax_connections = 4', ['--insecure']);
  const held = await Promise.all(Array.from({ length: 4 }, () => open(port)));
  // Each of the four was accepted: the source sent it the preamble.
  for (const s of held) t.ok(await firstBytes(s, 8), 'accepted');
  const extra = await open(port);
  t.equal(await firstBytes(extra, 8), null, 'the fifth is closed without a word');
  await src.waitForLog('refused a connection: at the connection limit (source.max_connections)');
  t.notOk(
    held.some((s) => s.destroyed),
    'the four are still open',
  );
  for (const s of held) s.destroy();
});

t.test('a frame announced before HELLO is refused on its header', async (t) => {
  const { port } = await source(t, 'handshake_timeout_ms = 600000', ['--insecure']);
  for (const [meta, payload] of [
    [0, 64 << 20],
    [64 * 1024, 0],
  ]) {
    const s = await open(port);
    const decoder = new FrameDecoder();
    const frames: Array<{ type: number; meta: Buffer }> = [];
    s.on('data', (b: Buffer) => {
      decoder.push(b);
      for (let e = decoder.next(); e; e = decoder.next()) if (e.kind === 'frame') frames.push(e.frame);
    });
    const head = encodeFrameHead(MessageType.Hello, 0, Buffer.alloc(0), payload);
    head.writeUInt32BE(meta, 0); // a header that announces the metadata; its bytes are never sent
    s.write(Buffer.concat([encodePreamble(), head]));
    await closed(s);
    t.equal(frames.length, 1, 'one frame came back');
    t.equal(frames[0]?.type, MessageType.Refuse, 'a REFUSE');
    const refuse = decodeRefuse(frames[0].meta);
    t.match(
      typeof refuse === 'string' ? refuse : refuse.reason,
      /frame lengths out of bounds .* of at most (16384|0)\)/,
      `metadata ${meta} and payload ${payload} refused on the 16-byte header alone`,
    );
  }
});

t.test('after HELLO a destination may send small frames only', async (t) => {
  const { port } = await source(t, 'handshake_timeout_ms = 600000', ['--insecure']);
  const peer = await connectWirePeer(port, helloFields());
  t.ok(await peer.frame(MessageType.Welcome), 'welcomed');
  // A payload no destination sends: refused on the header, its 64 MiB never awaited or kept.
  peer.socket.write(encodeFrameHead(MessageType.Fetch, 0, Buffer.alloc(18), 64 << 20));
  const refuse = await peer.frame(MessageType.Refuse);
  t.match(decodeRefuse(refuse!.meta), { reason: /frame lengths out of bounds/ });
  await peer.closed;
});

t.test('made-up session ids do not pile up: the longest idle session makes room', async (t) => {
  const { src, port } = await source(t, 'handshake_timeout_ms = 600000\nmax_connections = 4', ['--insecure']);
  for (let i = 0; i < 12; i++) {
    const peer = await connectWirePeer(port, helloFields({ session: `made-up-${i}` }));
    t.ok(await peer.frame(MessageType.Welcome), `session ${i} welcomed`);
    peer.socket.destroy();
    await peer.closed;
  }
  // The log line and the WELCOME travel apart: wait for the eighth line, then check no ninth came.
  await until(() => src.logCount('forgot an idle session to make room for a new one') >= 8, 'eight sessions forgotten');
  await src.waitForLog('forgot an idle session to make room for a new one');
  t.equal(src.logCount('forgot an idle session to make room for a new one'), 8, 'at most 4 sessions are kept');
});
