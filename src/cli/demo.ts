/**
 * `ferry demo`: a self-contained run on this machine. It generates an image,
 * serves it with ferry's NBD server, drives it with an NBD client (reads,
 * writes, flushes) and verifies every byte against a model.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Command } from 'commander';
import { createLogger } from '../log';
import { NbdServer, StaticExportTable } from '../nbd/server';
import { NbdClient } from '../nbd/client';
import { FileDevice } from '../store/file-device';

interface DemoFlags {
  sizeMib: string;
  keep?: boolean;
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run a built-in demonstration on this machine and verify the result')
    .option('--size-mib <n>', 'image size in MiB', '64')
    .option('--keep', 'keep the demo directory')
    .action(async (flags: DemoFlags) => {
      await runDemo(Number(flags.sizeMib), flags.keep ?? false);
    });
}

async function runDemo(sizeMib: number, keep: boolean): Promise<void> {
  if (!Number.isInteger(sizeMib) || sizeMib < 1 || sizeMib > 4096)
    throw new Error(`demo: --size-mib must be 1..4096 (got ${sizeMib})`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-demo-'));
  const image = path.join(dir, 'disk.img');
  const size = sizeMib << 20;
  const say = (line: string): void => void process.stdout.write(line + '\n');
  say(`ferry demo: generating a ${sizeMib} MiB image in ${image}`);
  const model = Buffer.alloc(size);
  for (let at = 0; at < size; at += 1 << 20) {
    if ((at >> 20) % 3 === 0) crypto.randomFillSync(model, at, 1 << 20); // a third data, the rest sparse
  }
  fs.writeFileSync(image, model);
  const device = FileDevice.open(image);
  const server = new NbdServer(
    new StaticExportTable([{ name: 'disk', description: 'ferry demo disk', device }]),
    createLogger('warn'),
  );
  await server.listen({ host: '127.0.0.1', port: 0 });
  say(`serving nbd://127.0.0.1:${server.port}/disk`);
  const client = await NbdClient.connect({ host: '127.0.0.1', port: server.port }, { exportName: 'disk' });
  const started = Date.now();
  let writes = 0;
  for (let i = 0; i < 2000; i++) {
    const length = 512 * (1 + (i % 16));
    const offset = crypto.randomInt(0, size - length);
    const data = crypto.randomBytes(length);
    data.copy(model, offset);
    await client.write(offset, data, i % 100 === 0);
    writes++;
  }
  await client.flush();
  say(`wrote ${writes} random blocks and flushed (${Date.now() - started} ms)`);
  let mismatches = 0;
  const chunk = 4 << 20;
  for (let at = 0; at < size; at += chunk) {
    const got = await client.read(at, Math.min(chunk, size - at));
    if (!got.equals(model.subarray(at, at + got.length))) mismatches++;
  }
  await client.close();
  await server.close();
  await device.close();
  const onDisk = fs.readFileSync(image);
  if (!onDisk.equals(model)) mismatches++;
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  if (mismatches) throw new Error(`demo: verification FAILED (${mismatches} mismatching ranges)`);
  say(`verified: every byte over NBD and on disk matches the expected image (${sizeMib} MiB)`);
}
