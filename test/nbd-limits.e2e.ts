/**
 * What one NBD client can hold of `ferry serve`: unread READ replies count
 * against its byte budget (nbd.max_in_flight_bytes) and go back to the
 * system when it leaves; unread option replies stop the handshake being
 * read; connections over nbd.max_connections are refused and logged once
 * per burst; an idle connection is closed after nbd.idle_timeout_ms.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { residentBytes, startFerryServe } from './helpers/ferry-serve';
import {
  NBD_CMD,
  connectSocket,
  handshake,
  readExactly,
  readSimpleReply,
  requestHeader,
  waitForClose,
} from './helpers/raw-nbd-client';
import { tempDir } from './helpers/temp-dir';
import { until } from './helpers/until';

const MiB = 1 << 20;

function image(t: Parameters<typeof tempDir>[0], size: number): string {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(size, 7));
  return file;
}

function config(t: Parameters<typeof tempDir>[0], nbd: string): string {
  const file = path.join(tempDir(t), 'ferry.toml');
  fs.writeFileSync(file, `[nbd]\n${nbd}\n`);
  return file;
}

async function served(host: string, port: number): Promise<void> {
  const s = await connectSocket(host, port);
  try {
    await handshake(s);
    s.write(requestHeader(NBD_CMD.read, 1n, 0, 4096));
    const reply = await readSimpleReply(s, 4096);
    if (reply.error !== 0 || reply.data[0] !== 7) throw new Error(`bad reply ${reply.error}`);
  } finally {
    s.destroy();
  }
}

t.test('clients that never read 32 MiB READ replies hold their budget each, and give it back', async (t) => {
  const ferry = await startFerryServe(t, ['--image', image(t, 256 * MiB)]);
  const base = residentBytes(ferry.pid);
  const CLIENTS = 4;
  const clients: net.Socket[] = [];
  for (let c = 0; c < CLIENTS; c++) {
    const s = await connectSocket(ferry.host, ferry.port);
    t.teardown(() => s.destroy());
    s.on('error', () => undefined);
    await handshake(s);
    s.pause(); // never read
    for (let i = 0; i < 8; i++) s.write(requestHeader(NBD_CMD.read, BigInt(i), i * 32 * MiB, 32 * MiB));
    clients.push(s);
  }
  // Each client gets its first two READs (64 MiB, the default budget) and no more. Part of
  // each may already sit in the kernel's socket buffers (both ends; loopback autotunes the
  // receiver's up to tcp_rmem's maximum), out of the server's RSS: wait for the rest.
  const inKernel = socketBufferMax('tcp_wmem') + socketBufferMax('tcp_rmem');
  const heldAtLeast = Math.max(8 * MiB, 64 * MiB - inKernel);
  let peak = 0;
  await until(
    () => {
      peak = Math.max(peak, residentBytes(ferry.pid));
      return peak - base >= CLIENTS * heldAtLeast;
    },
    `the replies are buffered (at least ${heldAtLeast / MiB} MiB per client in the server)`,
  );
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 50));
    peak = Math.max(peak, residentBytes(ferry.pid));
  }
  const perClient = (peak - base) / CLIENTS / MiB;
  t.ok(perClient < 72, `each unread client holds ${perClient.toFixed(0)} MiB (budget 64 MiB)`);
  await served(ferry.host, ferry.port);

  for (const s of clients) s.resetAndDestroy();
  // The pool keeps up to 64 MiB for reuse; the rest goes back.
  await until(() => residentBytes(ferry.pid) < base + 80 * MiB, 'the memory is given back', 10_000);
  t.pass(`RSS back to ${(residentBytes(ferry.pid) / MiB).toFixed(0)} MiB (base ${(base / MiB).toFixed(0)})`);
});

t.test('a flood of NBD_OPT_LIST with unread replies stops being read', async (t) => {
  const ferry = await startFerryServe(t, ['--image', image(t, MiB)]);
  const s = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => s.destroy());
  await readExactly(s, 18);
  s.pause();
  const head = Buffer.alloc(4);
  head.writeUInt32BE(3, 0);
  s.write(head);
  const list = Buffer.alloc(16);
  list.write('IHAVEOPT', 0, 'latin1');
  list.writeUInt32BE(3, 8); // NBD_OPT_LIST, no data
  const burst = Buffer.concat(Array.from({ length: 4096 }, () => list));
  // The kernel's socket buffers take several MiB of requests (more when the machine is idle and
  // they grow): write until they are full, i.e. the server stopped reading. 1024 bursts at most
  // (4 Mi LISTs, hundreds of MiB of replies).
  let bursts = 0;
  await until(() => {
    if (s.writableLength > 0) return true;
    for (let i = 0; i < 16 && bursts < 1024; i++, bursts++) s.write(burst);
    return false;
  }, 'the server stops reading the LISTs');
  t.comment(`${bursts * 4096} LISTs written before the server stopped reading`);
  const rss = residentBytes(ferry.pid);
  t.ok(rss < 150 * MiB, `server RSS ${(rss / MiB).toFixed(0)} MiB`);
  await served(ferry.host, ferry.port);
});

t.test('connections over nbd.max_connections are refused and logged once per burst', async (t) => {
  const ferry = await startFerryServe(t, ['--image', image(t, MiB), '--config', config(t, 'max_connections = 4')]);
  const held: net.Socket[] = [];
  for (let i = 0; i < 4; i++) {
    const s = await connectSocket(ferry.host, ferry.port);
    t.teardown(() => s.destroy());
    await handshake(s);
    held.push(s);
  }
  for (let i = 0; i < 20; i++) {
    const s = await connectSocket(ferry.host, ferry.port);
    await waitForClose(s, 5000);
    s.destroy();
  }
  t.equal(ferry.logCount(/refused an NBD connection: at the connection limit/), 1, 'one line for the burst');
  held.pop()!.destroy();
  await until(async () => {
    try {
      await served(ferry.host, ferry.port);
      return true;
    } catch {
      return false;
    }
  }, 'a slot is free again');
  t.pass('served once a connection went');
});

t.test('a connection idle for nbd.idle_timeout_ms is closed', async (t) => {
  const ferry = await startFerryServe(t, ['--image', image(t, MiB), '--config', config(t, 'idle_timeout_ms = 300')]);
  const idle = await connectSocket(ferry.host, ferry.port);
  t.teardown(() => idle.destroy());
  await handshake(idle);
  const opened = Date.now();
  await waitForClose(idle, 10_000);
  t.ok(Date.now() - opened >= 250, 'closed after the idle timeout');
  await served(ferry.host, ferry.port);
});

/** The largest buffer the kernel gives one TCP socket's send (tcp_wmem) or receive (tcp_rmem) side. */
function socketBufferMax(name: 'tcp_wmem' | 'tcp_rmem'): number {
  return Number(fs.readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim().split(/\s+/)[2]);
}
