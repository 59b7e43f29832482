/**
 * Load on one migrating `ferry dest`: 64 NBD clients at once reading,
 * writing, flushing and trimming against a model while the copy runs; then
 * 1,000 connections opened and dropped (mid-handshake, idle, with a request
 * outstanding, by FIN or RST), after which its descriptors, memory, timers
 * and sockets (`ferry ctl status --json`, diagnostics) must be back where
 * they were; then clients that send 32 MiB READs and never
 * read the replies, each of which must hold a bounded amount, given back
 * when it goes. Finally the export must equal the model.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { campaign, endCleanly, reportRow } from './campaign';
import { readAll } from './nbd-fuzzer';
import { startFerry, servingPort } from '../helpers/ferry-daemon';
import { residentBytes, startFerryServe } from '../helpers/ferry-serve';
import { connectSocket, handshake, readExactly, readSimpleReply, requestHeader } from '../helpers/raw-nbd-client';
import { tempDir, writePatternFile } from '../helpers/temp-dir';
import { until } from '../helpers/until';
import { sendControl } from '../../src/control/control-client';

endCleanly(t);

const MiB = 1 << 20;
const CLIENTS = 64;
const PAGE = 4096;
const CMD = { read: 0, write: 1, flush: 3, trim: 4 };

/** File-system requests come and go with the copy: every other kind of handle must come back to its count. */
const TRANSIENT = /^FSReq/;

/** The destination's open handles and timers by kind, as `ferry ctl status --json` reports them. */
async function activeResources(control: string): Promise<Record<string, number>> {
  const r = await sendControl(control, { cmd: 'status' }, 10_000);
  if (!r.ok) throw new Error(`status: ${r.error}`);
  if (!r.status.diagnostics) throw new Error('status without diagnostics');
  return r.status.diagnostics.activeResources;
}

/** The kinds above their baseline (the highest count seen before), as "Timeout 12 > 9". */
function aboveBaseline(now: Record<string, number>, baseline: Record<string, number>): string[] {
  return Object.entries(now)
    .filter(([kind, n]) => !TRANSIENT.test(kind) && n > (baseline[kind] ?? 0))
    .map(([kind, n]) => `${kind} ${n} > ${baseline[kind] ?? 0}`);
}

function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

t.test('64 clients, 1,000 dropped connections and unread replies on a migrating destination', async (t) => {
  const { full, random } = campaign();
  const rand = random('load');
  const int = (n: number): number => Math.floor(rand() * n);
  const opsPerClient = full ? 200 : 15;
  const drops = full ? 1000 : 200;
  const SIZE = (full ? 64 : 32) * MiB;
  const started = performance.now();

  const dir = tempDir(t, 'ferry-load-');
  const sourceImage = path.join(dir, 'source.img');
  const content = writePatternFile(sourceImage, SIZE, campaign().seed + 2);
  const source = await startFerryServe(t, ['--image', sourceImage, '--read-only']);
  const config = path.join(dir, 'ferry.toml');
  const control = path.join(dir, 'dest.ctl');
  fs.writeFileSync(config, '[copy]\nrate_limit = 4194304\n');
  const dest = await startFerry(t, [
    ...['dest', '--cutover-at-start', '--source', source.uri(), '--image', path.join(dir, 'dest.img')],
    ...['--listen', '127.0.0.1:0', '--config', config, '--control', control],
  ]);
  const pid = dest.child.pid!;
  const port = servingPort(dest);
  let alive = true;
  void dest.exited.then(() => (alive = false));
  let peakRss = residentBytes(pid);
  const sampler = setInterval(() => {
    try {
      peakRss = Math.max(peakRss, residentBytes(pid));
    } catch {
      // exited: checked below
    }
  }, 100);

  // 1. 64 clients at once, each in its own region, one request at a time, every READ checked.
  const model = Buffer.from(content);
  const region = SIZE / CLIENTS;
  const ops = { read: 0, write: 0, flush: 0, trim: 0, wrong: [] as string[] };
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      const s = await connectSocket('127.0.0.1', port);
      try {
        await handshake(s);
        let cookie = 1n;
        for (let i = 0; i < opsPerClient; i++) {
          const roll = rand();
          const pages = 1 + int(8);
          const at = c * region + int(region / PAGE - pages + 1) * PAGE + (roll < 0.3 ? int(PAGE) : 0);
          const length = Math.min(pages * PAGE, c * region + region - at);
          if (roll < 0.4) {
            const data = Buffer.allocUnsafe(length).fill(int(256));
            s.write(Buffer.concat([requestHeader(CMD.write, cookie++, at, length), data]));
            const reply = await readSimpleReply(s);
            if (reply.error !== 0) ops.wrong.push(`WRITE ${at}+${length}: error ${reply.error}`);
            else data.copy(model, at);
            ops.write++;
          } else if (roll < 0.5) {
            s.write(requestHeader(CMD.flush, cookie++, 0, 0));
            if ((await readSimpleReply(s)).error !== 0) ops.wrong.push('FLUSH failed');
            ops.flush++;
          } else if (roll < 0.58) {
            // Whole 4 KiB blocks: the destination zeroes a trimmed block.
            const start = at - (at % PAGE);
            const trimmed = Math.min(pages * PAGE, c * region + region - start);
            s.write(requestHeader(CMD.trim, cookie++, start, trimmed));
            const reply = await readSimpleReply(s);
            if (reply.error === 0) model.fill(0, start, start + trimmed);
            ops.trim++;
          } else {
            s.write(requestHeader(CMD.read, cookie++, at, length));
            const reply = await readSimpleReply(s, length);
            if (reply.error !== 0) ops.wrong.push(`READ ${at}+${length}: error ${reply.error}`);
            else if (!reply.data.equals(model.subarray(at, at + length)))
              ops.wrong.push(`READ ${at}+${length} differs`);
            ops.read++;
          }
        }
      } finally {
        s.destroy();
      }
    }),
  );
  t.same(
    ops.wrong.slice(0, 10),
    [],
    `${ops.read} reads, ${ops.write} writes, ${ops.flush} flushes, ${ops.trim} trims by ${CLIENTS} clients agree with the model`,
  );

  // 2. Connections opened and dropped; descriptors and memory must come back.
  const fdsBefore = openFds(pid);
  const rssBefore = residentBytes(pid);
  const handlesBefore: Record<string, number> = {};
  for (let i = 0; i < 3; i++)
    for (const [kind, n] of Object.entries(await activeResources(control)))
      handlesBefore[kind] = Math.max(handlesBefore[kind] ?? 0, n);
  let dropped = 0;
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (dropped < drops) {
        dropped++;
        const kind = int(4);
        const s = await connectSocket('127.0.0.1', port);
        s.on('error', () => undefined);
        if (kind >= 1) await readExactly(s, 18).catch(() => undefined);
        if (kind >= 2) {
          await handshake(s).catch(() => undefined);
        }
        if (kind === 3) s.write(requestHeader(CMD.read, 1n, int(SIZE / PAGE) * PAGE, 65_536));
        if (rand() < 0.5) s.resetAndDestroy();
        else s.destroy();
      }
    }),
  );
  let fdsAfter = 0;
  await until(
    () => (fdsAfter = openFds(pid)) <= fdsBefore,
    `the destination's descriptors are back to ${fdsBefore}`,
    20_000,
  ).catch((e: Error) => t.fail(e.message));
  let handlesAbove: string[] = [];
  await until(
    async () => (handlesAbove = aboveBaseline(await activeResources(control), handlesBefore)).length === 0,
    "the destination's timers and sockets are back to their counts",
    20_000,
  ).catch(() => undefined);
  t.same(
    handlesAbove,
    [],
    `timers and sockets back to ${JSON.stringify(handlesBefore)} after ${drops} dropped connections`,
  );
  const rssAfterDrops = residentBytes(pid);
  t.ok(fdsAfter <= fdsBefore, `descriptors ${fdsBefore} before, ${fdsAfter} after ${drops} dropped connections`);
  t.ok(
    rssAfterDrops < rssBefore + 32 * MiB,
    `RSS ${(rssBefore / MiB).toFixed(0)} → ${(rssAfterDrops / MiB).toFixed(0)} MiB`,
  );

  // 3. Clients that never read their 32 MiB READ replies: 64 MiB each at most (nbd.max_in_flight_bytes).
  const greedy: net.Socket[] = [];
  const baseGreedy = residentBytes(pid);
  for (let c = 0; c < 4; c++) {
    const s = await connectSocket('127.0.0.1', port);
    s.on('error', () => undefined);
    await handshake(s);
    s.pause();
    for (let i = 0; i < 8; i++) s.write(requestHeader(CMD.read, BigInt(i), 0, 32 * MiB));
    greedy.push(s);
  }
  let greedyPeak = baseGreedy;
  for (let i = 0; i < 30; i++) {
    await new Promise((r) => setTimeout(r, 100));
    greedyPeak = Math.max(greedyPeak, residentBytes(pid));
  }
  const perClient = (greedyPeak - baseGreedy) / 4 / MiB;
  t.ok(perClient < 72, `an unread client holds ${perClient.toFixed(0)} MiB`);
  for (const s of greedy) s.resetAndDestroy();
  await until(() => residentBytes(pid) < baseGreedy + 80 * MiB, 'the unread replies are given back', 15_000).catch(
    (e: Error) => t.fail(e.message),
  );
  const rssAfterGreedy = residentBytes(pid);
  clearInterval(sampler);

  let losses = 0;
  if (alive) {
    const image = await readAll('127.0.0.1', port, SIZE);
    for (let at = 0; at < SIZE; at += PAGE)
      if (!image.subarray(at, at + PAGE).equals(model.subarray(at, at + PAGE))) losses++;
  }
  t.equal(losses, 0, 'the export equals the model');
  const survived = alive;
  const code = await dest.stop();
  t.equal(code, 0, 'the destination stops cleanly');
  reportRow({
    scenario: 'load dest',
    faults: `${CLIENTS} clients at once (${(ops.read + ops.write + ops.flush + ops.trim).toLocaleString('en')} requests), ${drops} connections dropped, 4 clients never reading 32 MiB READs`,
    checks: `${ops.read} reads vs the model, ${SIZE / PAGE} pages at the end; fds ${fdsBefore} → ${fdsAfter}, timers ${handlesBefore.Timeout ?? 0} → ${handlesAbove.length ? handlesAbove.join(', ') : 'back'}, RSS ${(rssBefore / MiB).toFixed(0)} → ${(rssAfterDrops / MiB).toFixed(0)} MiB; unread client ${perClient.toFixed(0)} MiB each, RSS ${(rssAfterGreedy / MiB).toFixed(0)} MiB after they left`,
    losses: losses + ops.wrong.length,
    crashes: survived && code === 0 ? 0 : 1,
    hangs: 0,
    peakRssMiB: Math.round(peakRss / MiB),
    seconds: Math.round((performance.now() - started) / 1000),
  });
});
