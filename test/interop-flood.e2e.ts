/**
 * A client that pipelines requests and never reads a reply: the server must
 * stop reading from it rather than buffer replies without bound, and keep
 * serving everyone else meanwhile.
 */
import path from 'node:path';
import t from 'tap';
import { residentBytes, startFerryServe } from './helpers/ferry-serve';
import { NBD_CMD, connectSocket, handshake, readSimpleReply, requestHeader } from './helpers/raw-nbd-client';
import { tempDir, writePatternFile } from './helpers/temp-dir';

const MiB = 1 << 20;
const REQUESTS = 200_000;
const READ_LENGTH = 16 * 1024; // unbounded, the replies would be 3.2 GB
const RSS_LIMIT = 300 * MiB;

t.test('a flood of unread requests keeps the server bounded and serving', async (t) => {
  const image = path.join(tempDir(t), 'flood.img');
  const content = writePatternFile(image, 64 * MiB, 12);
  const ferry = await startFerryServe(t, ['--image', image]);
  const baseline = residentBytes(ferry.pid);

  const flood = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => flood.destroy());
  await handshake(flood);
  flood.pause(); // never read a reply
  const batch: Buffer[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    const offset = (i * READ_LENGTH) % (content.length - READ_LENGTH);
    batch.push(requestHeader(NBD_CMD.read, BigInt(i), offset, READ_LENGTH));
    if (batch.length === 1000) flood.write(Buffer.concat(batch.splice(0)));
  }
  if (batch.length) flood.write(Buffer.concat(batch));

  let peak = baseline;
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline) {
    peak = Math.max(peak, residentBytes(ferry.pid));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.ok(flood.writableLength > 0, `the server stopped reading (${flood.writableLength} request bytes unsent)`);
  t.ok(peak < RSS_LIMIT, `server RSS peaked at ${(peak / MiB).toFixed(0)} MiB (limit ${RSS_LIMIT / MiB})`);

  const other = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => other.destroy());
  await handshake(other);
  for (let i = 0; i < 16; i++) {
    const offset = i * 3 * MiB + 123;
    other.write(requestHeader(NBD_CMD.read, 1000n + BigInt(i), offset, 4096));
    const reply = await readSimpleReply(other, 4096);
    if (!reply.data.equals(content.subarray(offset, offset + 4096))) t.fail(`wrong data at ${offset}`);
  }
  t.pass('another client is served during the flood');
  peak = Math.max(peak, residentBytes(ferry.pid));
  t.ok(peak < RSS_LIMIT, `RSS still bounded (${(peak / MiB).toFixed(0)} MiB)`);

  flood.destroy();
  other.destroy();
  t.equal(await ferry.stop(), 0, 'the server shuts down cleanly after the flood');
});
