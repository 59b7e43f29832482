/**
 * A deliberately small NBD client on a bare socket, for the tests that must
 * misbehave in ways a real client will not: junk in the handshake, requests
 * it never reads replies to, hanging up mid-request. It uses old-style
 * NBD_OPT_EXPORT_NAME and simple replies only; it shares no code with ferry.
 */
import net from 'node:net';

export const NBD_CMD = { read: 0, write: 1, disc: 2, flush: 3 } as const;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

export interface SimpleReply {
  error: number;
  cookie: bigint;
  data: Buffer;
}

export function connectSocket(host: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port }, () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Reads exactly n bytes (or rejects when the socket ends first). */
export function readExactly(socket: net.Socket, n: number, timeoutMs = 10_000): Promise<Buffer> {
  // Nothing to wait for (a zero-length READ's reply has no data): waiting for a 'data' event would
  // hang until the timeout whenever no other reply follows.
  if (n === 0) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let have = 0;
    const timer = setTimeout(() => finish(new Error(`timed out waiting for ${n} bytes (have ${have})`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      parts.push(chunk);
      have += chunk.length;
      if (have < n) return;
      const all = Buffer.concat(parts);
      finish(null, all.subarray(0, n));
      if (all.length > n) socket.unshift(all.subarray(n)); // after our listener is gone
    };
    const onEnd = (): void => finish(new Error(`socket ended after ${have} of ${n} bytes`));
    const finish = (err: Error | null, value?: Buffer): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.pause();
      if (err) reject(err);
      else resolve(value!);
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.resume();
  });
}

/** Resolves when the server closes the connection (end or close), rejects after the timeout. */
export function waitForClose(socket: net.Socket, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed || socket.readableEnded) return resolve();
    const timer = setTimeout(() => reject(new Error('the server kept the connection open')), timeoutMs);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    socket.once('end', done);
    socket.once('close', done);
    socket.on('error', () => {});
    socket.resume(); // drain anything the server still sends
  });
}

/** Fixed-newstyle handshake ending in NBD_OPT_EXPORT_NAME; returns the export size. */
export async function handshake(socket: net.Socket, exportName = ''): Promise<number> {
  const greeting = await readExactly(socket, 18);
  if (greeting.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('no NBDMAGIC in the greeting');
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
  const name = Buffer.from(exportName, 'utf8');
  const option = Buffer.alloc(16);
  option.write('IHAVEOPT', 0, 'latin1');
  option.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
  option.writeUInt32BE(name.length, 12);
  socket.write(Buffer.concat([clientFlags, option, name]));
  const reply = await readExactly(socket, 10);
  return Number(reply.readBigUInt64BE(0));
}

export function requestHeader(type: number, cookie: bigint, offset: number, length: number, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** Reads one simple reply; `dataLength` is the payload a successful READ carries. */
export async function readSimpleReply(socket: net.Socket, dataLength = 0): Promise<SimpleReply> {
  const header = await readExactly(socket, 16);
  const magic = header.readUInt32BE(0);
  if (magic !== SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  const error = header.readUInt32BE(4);
  const data = error === 0 && dataLength > 0 ? await readExactly(socket, dataLength) : Buffer.alloc(0);
  return { error, cookie: header.readBigUInt64BE(8), data };
}
