/**
 * `reconnect` on an upstream already closed (the migration completed) fails
 * at once, also after the upstream had stopped for good (its source began
 * serving another image): it must not wait for streams nobody will open.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { CodecPool } from '../src/pool';
import { FileDevice } from '../src/store/file-device';
import { CodecChooser } from '../src/wire/codec-chooser';
import { WireSourceServer } from '../src/wire/source-server';
import { SourceSessions } from '../src/wire/source-sessions';
import type { SourceImage } from '../src/wire/source-image';
import { WireUpstream } from '../src/upstream/wire-upstream';
import { tempDir } from './helpers/temp-dir';
import { until } from './helpers/until';

const BS = 4096;
const auth = { kind: 'insecure' } as const;
const log = pino({ level: 'silent' });

t.test('reconnect after close rejects, even after a fatal refusal', async (t) => {
  const dir = tempDir(t, 'ferry-reconnect-closed-');
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(64 * BS, 1));
  const device = FileDevice.open(file, { readOnly: true });
  const pool = new CodecPool({ workers: 1, codec: 'none' });
  const serve = (identity: string, sessions: SourceSessions): WireSourceServer =>
    new WireSourceServer({
      // One image whose identity the test changes: only what a connection reads of a SourceImage.
      exports: {
        find: (name) =>
          name === '' || name === 'disk.img'
            ? ({
                name: 'disk.img',
                device,
                identity,
                sessions,
                counters: { batches: 0, bytesRead: 0, bytesSent: 0, references: 0 },
                wireConnections: 0,
              } as unknown as SourceImage)
            : `unknown export "${name}"`,
      },
      auth,
      pool,
      chooser: new CodecChooser('none', ['none'], 1),
      log,
    });
  const sessions = (identity: string): SourceSessions =>
    new SourceSessions({ imageSize: 64 * BS, image: file, identity, device: null, recordPath: null, log });
  const first = sessions('image-a');
  let server = serve('image-a', first);
  const address = await server.listen('127.0.0.1', 0);
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  const upstream = await WireUpstream.open(
    `ferry://127.0.0.1:${port}/disk.img`,
    auth,
    pool,
    {
      blockSize: BS,
      backgroundStreams: 1,
      maxBatchBlocks: 64,
      connectTimeoutMs: 5000,
      minBackoffMs: 10,
      maxBackoffMs: 50,
      stallTimeoutMs: 3_600_000,
      maxAttempts: 3,
    },
    log,
  );
  // The source comes back serving another image: the upstream's streams are refused (identity mismatch), for good.
  await server.close();
  const second = sessions('image-b');
  server = serve('image-b', second);
  await server.listen('127.0.0.1', port);
  let fatal = '';
  await until(
    async () => {
      fatal = await upstream.fetch(0, BS, 'urgent').then(
        () => '',
        (e: Error) => e.message,
      );
      return /serves image image-b/.test(fatal);
    },
    'the upstream stopping for good',
    30_000,
    20,
  );
  t.pass(`the upstream stopped: ${fatal}`);
  await upstream.close();
  // The right image is back: a reconnect of an open upstream would now succeed.
  await server.close();
  const third = sessions('image-a');
  server = serve('image-a', third);
  await server.listen('127.0.0.1', port);
  await t.rejects(upstream.reconnect(), /upstream closed/, 'reconnect on a closed upstream fails at once');
  await server.close();
  first.close();
  second.close();
  third.close();
  await pool.close();
  await device.close();
});
