/**
 * Servers that predate NBD_OPT_GO: oldstyle, plain newstyle, and fixed
 * newstyle without GO (minimal servers in test/helpers, serving an in-memory
 * image). ferry's
 * client reads the right bytes from each, and a destination migrates from
 * each to the end.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/nbd/client';
import { startLegacyNbdServer, type LegacyServerOptions } from './helpers/legacy-nbd-server';
import { startFerry } from './helpers/ferry-daemon';
import { patternBytes, tempDir } from './helpers/temp-dir';

const SIZE = 4 << 20;
const kinds: Array<{ label: string; options: Omit<LegacyServerOptions, 'image'>; style: string }> = [
  { label: 'oldstyle', options: { style: 'oldstyle' }, style: 'oldstyle' },
  { label: 'plain newstyle', options: { style: 'newstyle', exportName: 'disk' }, style: 'newstyle' },
  {
    label: 'plain newstyle with NO_ZEROES',
    options: { style: 'newstyle', exportName: 'disk', noZeroes: true },
    style: 'newstyle',
  },
  {
    label: 'fixed newstyle without NBD_OPT_GO',
    options: { style: 'fixed-newstyle-without-go', exportName: 'disk' },
    style: 'fixed-newstyle',
  },
];

for (const kind of kinds) {
  t.test(`${kind.label}: the client reads the right bytes`, async (t) => {
    const image = patternBytes(SIZE, 11);
    const server = await startLegacyNbdServer(t, { ...kind.options, image });
    const client = await NbdClient.connect(
      { host: '127.0.0.1', port: server.port },
      { exportName: kind.options.exportName ?? '' },
    );
    t.teardown(() => client.destroy());
    t.equal(client.negotiation, kind.style);
    t.equal(client.size, SIZE);
    t.ok(client.readOnly, 'the transmission flags arrived');
    t.notOk(client.structuredReplies, 'no structured replies without options');
    for (const [offset, length] of [
      [0, 4096],
      [12345, 70000],
      [SIZE - 512, 512],
      [SIZE / 2, 1 << 20],
    ]) {
      const data = await client.read(offset, length);
      t.ok(data.equals(image.subarray(offset, offset + length)), `read ${offset}+${length}`);
    }
    const reads = await Promise.all([0, 1, 2, 3].map((i) => client.read(i * 65536, 65536)));
    t.ok(Buffer.concat(reads).equals(image.subarray(0, 4 * 65536)), 'pipelined reads match their cookies');
    await client.close();
  });
}

t.test('plain newstyle: an unknown export is refused with its name', async (t) => {
  const server = await startLegacyNbdServer(t, { style: 'newstyle', exportName: 'disk', image: Buffer.alloc(4096) });
  await t.rejects(
    NbdClient.connect({ host: '127.0.0.1', port: server.port }, { exportName: 'nosuch' }),
    /refused export "nosuch" \(it closed the connection after NBD_OPT_EXPORT_NAME\)/,
  );
});

for (const kind of kinds.slice(0, 2)) {
  t.test(`${kind.label}: a destination migrates from it to the end`, async (t) => {
    const dir = tempDir(t, 'ferry-legacy-');
    const source = patternBytes(SIZE, 12);
    const server = await startLegacyNbdServer(t, { ...kind.options, image: source });
    const image = path.join(dir, 'dest.img');
    const dest = await startFerry(t, [
      'dest',
      ...['--source', `nbd://127.0.0.1:${server.port}/${kind.options.exportName ?? ''}`],
      // Nobody writes the in-memory image: this side may be the authority at once.
      ...['--image', image, '--listen', '127.0.0.1:0', '--cutover-at-start'],
    ]);
    await dest.waitForLog('migration complete: every block held, source disconnected', 60_000);
    t.equal(await dest.stop(), 0);
    t.ok(fs.readFileSync(image).equals(source), 'the destination image is the source');
    t.ok(server.sessions >= 2, 'urgent and background connections');
  });
}
