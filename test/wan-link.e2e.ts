import { execFileSync, spawnSync } from 'node:child_process';
import t, { Test } from 'tap';
import { openWanLink, ProxyLink, type WanLink } from '../bench/wan/index';
import { bulkTransfer } from '../bench/wan/fidelity';

const OPTIONS = { bandwidthBitsPerSecond: 100e6, oneWayLatencyMs: 25 };

function namespaces(): string[] {
  try {
    const out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    return out.split('\n').map((line) => line.split(' ')[0]);
  } catch {
    return [];
  }
}

/** Other runs may have their own ferry- namespaces at the same time; only this process's count. */
function ownNamespaces(): string[] {
  return namespaces().filter((name) => name === `ferry-src-${process.pid}` || name === `ferry-dst-${process.pid}`);
}

async function checkFidelity(t: Test, link: WanLink): Promise<void> {
  const fidelity = await link.measure();
  t.comment(
    `${link.kind}: rtt ${fidelity.rttMs.toFixed(2)} ms, ` +
      `throughput ${(fidelity.throughputBitsPerSecond / 1e6).toFixed(1)} Mbit/s`,
  );
  // How close the link comes to 50 ms and 100 Mbit/s is measured by the benchmarks (docs/benchmarks.md);
  // here only what holds on any machine, however loaded: the link is never faster than asked, and it
  // delays and carries data at all.
  t.ok(fidelity.rttMs >= 49, `rtt at least 2 × 25 ms (got ${fidelity.rttMs.toFixed(2)})`);
  t.ok(fidelity.rttMs < 1000, `rtt bounded (got ${fidelity.rttMs.toFixed(2)})`);
  const mbit = fidelity.throughputBitsPerSecond / 1e6;
  t.ok(mbit <= 105, `throughput at most the 100 Mbit/s cap (got ${mbit.toFixed(1)})`);
  t.ok(mbit > 0, `data flows (got ${mbit.toFixed(1)} Mbit/s)`);

  const before = (await link.freshCounters()).bytesToDest;
  const bulk = await bulkTransfer(link, 1, true);
  t.ok(bulk.sent.bytes > 1e6, `bulk transfer sent ${bulk.sent.bytes} bytes`);
  t.equal(bulk.received.bytes, bulk.sent.bytes, 'every byte arrived');
  t.equal(bulk.received.sha256, bulk.sent.sha256, 'bytes intact (sha256)');
  t.ok((await link.freshCounters()).bytesToDest - before >= bulk.sent.bytes, 'counters saw the transfer');
}

t.test('the best link this machine allows delivers what was asked', async (t) => {
  let link: WanLink;
  try {
    link = await openWanLink(OPTIONS);
  } catch (err) {
    t.plan(0, `skipped: no emulated WAN works here: ${(err as Error).message}`);
    return;
  }
  let closed = false;
  t.teardown(async () => {
    if (!closed) await link.close();
  });
  t.comment(`${link.kind}: ${link.note}`);
  await checkFidelity(t, link);
  await link.close();
  closed = true;
  t.same(ownNamespaces(), [], 'no namespaces left after close');
});

t.test('the loopback proxy delivers what was asked', async (t) => {
  const link = new ProxyLink(OPTIONS, 'chosen by the test');
  t.teardown(() => link.close());
  t.match(link.note, /no loss support/);
  await checkFidelity(t, link);
});

t.test('namespaces left by a dead run are removed, not those of a live run', async (t) => {
  const dead = spawnSync('true').pid;
  const stale = [`ferry-src-${dead}`, `ferry-dst-${dead}`];
  const live = `ferry-src-${process.ppid}`;
  try {
    for (const name of [...stale, live]) execFileSync('ip', ['netns', 'add', name], { stdio: 'ignore' });
  } catch (err) {
    return void t.plan(0, `skipped: cannot create namespaces: ${(err as Error).message}`);
  }
  t.teardown(() => {
    for (const name of [...stale, live]) spawnSync('ip', ['netns', 'delete', name], { stdio: 'ignore' });
  });
  const link = await openWanLink({ bandwidthBitsPerSecond: 10e6, oneWayLatencyMs: 1 });
  t.teardown(() => link.close());
  if (link.kind !== 'netns-tun-bridge') return void t.plan(0, `skipped: no namespace bridge: ${link.note}`);
  t.same(
    namespaces().filter((name) => stale.includes(name)),
    [],
    'stale namespaces deleted',
  );
  t.ok(namespaces().includes(live), 'a live process’s namespace kept');
  t.same(ownNamespaces().sort(), [`ferry-dst-${process.pid}`, `ferry-src-${process.pid}`], 'own namespaces exist');
  await link.close();
  t.same(ownNamespaces(), [], 'own namespaces deleted at close');
});
