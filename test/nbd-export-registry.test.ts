/**
 * One NBD server, many exports chosen by name: LIST names them all, GO on an
 * unknown (or removed) name is NBD_REP_ERR_UNKNOWN, the empty name selects
 * nothing unless a default was chosen, and each client reads its own disk.
 */
import t from 'tap';
import path from 'node:path';
import pino from 'pino';
import { ExportRegistry } from '../src/nbd/export-registry';
import { Negotiation, NegotiationStep } from '../src/nbd/negotiation';
import { NbdServer } from '../src/nbd/server';
import { NbdClient } from '../src/nbd/client';
import { ClientDecoder, encodeGoData } from '../src/nbd/client-codec';
import { Option, OptionReply } from '../src/nbd/protocol';
import { FileDevice } from '../src/store/file-device';
import type { OptionMessage } from '../src/nbd/server-decoder';
import { tempDir, writePatternFile } from './helpers/temp-dir';

function option(code: number, data: Buffer = Buffer.alloc(0)): OptionMessage {
  return { kind: 'option', option: code, data, length: data.length };
}

function replyTypes(step: NegotiationStep): Array<{ type: number; data: Buffer }> {
  const decoder = new ClientDecoder(() => 0);
  const greeting = Buffer.alloc(18);
  greeting.write('NBDMAGICIHAVEOPT', 0, 'latin1');
  decoder.push(greeting);
  decoder.next();
  for (const r of step.replies) decoder.push(r);
  const out: Array<{ type: number; data: Buffer }> = [];
  for (let m = decoder.next(); m; m = decoder.next())
    if (m.kind === 'optionReply') out.push({ type: m.type, data: m.data });
  return out;
}

function listedNames(step: NegotiationStep): string[] {
  return replyTypes(step)
    .filter((r) => r.type === OptionReply.Server)
    .map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
}

t.test('exports are added and removed by name; LIST and GO follow', async (t) => {
  const dir = tempDir(t);
  const a = FileDevice.open(path.join(dir, 'a'), { createSize: 1 << 16 });
  const b = FileDevice.open(path.join(dir, 'b'), { createSize: 1 << 17 });
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const registry = new ExportRegistry();
  registry.add({ name: 'vm1/disk0', description: 'vm1 disk0', device: a });
  registry.add({ name: 'vm2/disk0', description: 'vm2 disk0', device: b });
  t.throws(() => registry.add({ name: 'vm1/disk0', description: '', device: b }), /already served/);
  t.throws(() => registry.add({ name: '', description: '', device: b }), /needs a name/);

  const n = new Negotiation(registry);
  n.clientFlags(3);
  t.same(listedNames(n.option(option(Option.List))).sort(), ['vm1/disk0', 'vm2/disk0']);
  const go = n.option(option(Option.Go, encodeGoData('vm2/disk0', [])));
  t.equal(go.next, 'transmission');
  if (go.next === 'transmission') t.equal(go.session.export.device, b);

  const unknown = new Negotiation(registry).option(option(Option.Go, encodeGoData('vm3/disk0', [])));
  t.equal(unknown.next, 'continue');
  t.equal(replyTypes(unknown)[0].type, OptionReply.ErrUnknown);

  // The empty name is nobody's disk unless a default is chosen.
  t.equal(
    replyTypes(new Negotiation(registry).option(option(Option.Go, encodeGoData('', []))))[0].type,
    OptionReply.ErrUnknown,
  );
  t.equal(new Negotiation(registry).option(option(Option.ExportName, Buffer.alloc(0))).next, 'close');
  registry.setDefault('vm1/disk0');
  const def = new Negotiation(registry).option(option(Option.Go, encodeGoData('', [])));
  if (def.next === 'transmission') t.equal(def.session.export.device, a);
  else t.fail('the default export is served for the empty name');

  t.ok(registry.remove('vm2/disk0'));
  t.notOk(registry.remove('vm2/disk0'), 'removing twice is a no-op');
  t.same(listedNames(new Negotiation(registry).option(option(Option.List))), ['vm1/disk0']);
  const gone = new Negotiation(registry).option(option(Option.Go, encodeGoData('vm2/disk0', [])));
  t.equal(replyTypes(gone)[0].type, OptionReply.ErrUnknown);
});

t.test('one listener serves each client the disk it names', async (t) => {
  const dir = tempDir(t);
  const contentA = writePatternFile(path.join(dir, 'a'), 1 << 16, 7);
  const contentB = writePatternFile(path.join(dir, 'b'), 1 << 16, 8);
  const a = FileDevice.open(path.join(dir, 'a'));
  const b = FileDevice.open(path.join(dir, 'b'));
  const registry = new ExportRegistry();
  registry.add({ name: 'a', description: '', device: a });
  const server = new NbdServer(registry, pino({ level: 'silent' }));
  await server.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await server.close();
    await a.close();
    await b.close();
  });
  const address = { host: '127.0.0.1', port: server.port };
  await t.rejects(NbdClient.connect(address, { exportName: 'b' }), /unknown|export/i, 'b is not served yet');
  // Added while the server runs: the next client finds it.
  registry.add({ name: 'b', description: '', device: b });
  const ca = await NbdClient.connect(address, { exportName: 'a' });
  const cb = await NbdClient.connect(address, { exportName: 'b' });
  t.ok((await ca.read(4096, 8192)).equals(contentA.subarray(4096, 12288)));
  t.ok((await cb.read(4096, 8192)).equals(contentB.subarray(4096, 12288)));
  await ca.close();
  await cb.close();
});
