import t from 'tap';
import { Negotiation, NegotiationStep, parseMetaContextRequest, parseNameAndInfos } from '../src/nbd/negotiation';
import { StaticExportTable } from '../src/nbd/server';
import { checkRequest } from '../src/nbd/request-check';
import { encodeGoData, encodeMetaContextData, ClientDecoder } from '../src/nbd/client-codec';
import { Command, CommandFlag, InfoType, Option, OptionReply, TransmissionFlag } from '../src/nbd/protocol';
import type { BlockDevice } from '../src/store/block-device';
import type { OptionMessage, RequestMessage } from '../src/nbd/server-decoder';

function fakeDevice(size: number, readOnly = false): BlockDevice {
  const fail = (): never => {
    throw new Error('not used');
  };
  return {
    size,
    readOnly,
    blockSize: { minimum: 1, preferred: 4096, maximum: 1 << 25 },
    canTrim: true,
    canFastZero: false,
    read: fail,
    write: fail,
    flush: fail,
    trim: fail,
    zero: fail,
    cache: fail,
    status: fail,
    close: fail,
  };
}

const table = new StaticExportTable([
  { name: 'disk', description: 'the disk', device: fakeDevice(1 << 20) },
  { name: 'ro', description: '', device: fakeDevice(4096, true) },
]);

function option(option: number, data: Buffer | null = Buffer.alloc(0)): OptionMessage {
  return { kind: 'option', option, data, length: data ? data.length : 99999 };
}

/** Option replies (type, data) as a client would read them. */
function replies(step: NegotiationStep): Array<{ type: number; data: Buffer }> {
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

t.test('client flags: unknown bits close the connection', async (t) => {
  t.equal(new Negotiation(table).clientFlags(3), null);
  t.match(new Negotiation(table).clientFlags(4), /unknown client flags/);
});

t.test('GO on a known export sends INFO_EXPORT, requested infos and ACK, then transmission', async (t) => {
  const n = new Negotiation(table);
  n.clientFlags(3);
  const step = n.option(option(Option.Go, encodeGoData('disk', [InfoType.BlockSize, InfoType.Description])));
  t.equal(step.next, 'transmission');
  const r = replies(step);
  t.same(
    r.map((x) => x.type),
    [OptionReply.Info, OptionReply.Info, OptionReply.Info, OptionReply.Ack],
  );
  t.equal(r[0].data.readUInt16BE(0), InfoType.Export);
  t.equal(r[0].data.readUInt32BE(6), 1 << 20);
  const flags = r[0].data.readUInt16BE(10);
  t.ok(
    flags & TransmissionFlag.CanMultiConn && flags & TransmissionFlag.SendFlush && flags & TransmissionFlag.SendTrim,
  );
  t.notOk(flags & TransmissionFlag.ReadOnly);
  t.notOk(flags & TransmissionFlag.SendFastZero, 'not advertised when the device cannot');
  t.equal(r[1].data.readUInt16BE(0), InfoType.BlockSize);
  t.equal(r[2].data.toString('utf8', 2), 'the disk');
});

t.test('GO and INFO on an unknown export: NBD_REP_ERR_UNKNOWN and the haggling goes on', async (t) => {
  const n = new Negotiation(table);
  for (const o of [Option.Go, Option.Info]) {
    const step = n.option(option(o, encodeGoData('nosuch', [])));
    t.equal(step.next, 'continue');
    t.equal(replies(step)[0].type, OptionReply.ErrUnknown);
  }
});

t.test('EXPORT_NAME: known name enters transmission, unknown closes; empty is the default export', async (t) => {
  const n = new Negotiation(table);
  n.clientFlags(1);
  const ok = n.option(option(Option.ExportName, Buffer.from('ro')));
  t.equal(ok.next, 'transmission');
  t.equal(ok.replies[0].length, 134, 'size, flags and 124 zeros without NO_ZEROES');
  if (ok.next === 'transmission') t.ok(ok.session.transmissionFlags & TransmissionFlag.ReadOnly);
  t.equal(new Negotiation(table).option(option(Option.ExportName, Buffer.from('x'))).next, 'close');
  const n2 = new Negotiation(table);
  n2.clientFlags(3);
  const def = n2.option(option(Option.ExportName, Buffer.alloc(0)));
  t.equal(def.replies[0].length, 10);
  if (def.next === 'transmission') t.equal(def.session.export.name, 'disk');
});

t.test('LIST names every export; with data it is invalid', async (t) => {
  const n = new Negotiation(table);
  const r = replies(n.option(option(Option.List)));
  t.same(
    r.map((x) => x.type),
    [OptionReply.Server, OptionReply.Server, OptionReply.Ack],
  );
  t.equal(r[0].data.toString('utf8', 4, 4 + r[0].data.readUInt32BE(0)), 'disk');
  t.equal(replies(n.option(option(Option.List, Buffer.from('x'))))[0].type, OptionReply.ErrInvalid);
});

t.test('unsupported, too-long and malformed options are answered with errors', async (t) => {
  const n = new Negotiation(table);
  t.equal(replies(n.option(option(Option.StartTls)))[0].type, OptionReply.ErrUnsup);
  t.equal(replies(n.option(option(77)))[0].type, OptionReply.ErrUnsup);
  t.equal(replies(n.option(option(Option.Go, null)))[0].type, OptionReply.ErrTooBig);
  t.equal(replies(n.option(option(Option.Go, Buffer.from([0, 0, 0, 9, 1]))))[0].type, OptionReply.ErrInvalid);
  t.equal(replies(n.option(option(Option.StructuredReply, Buffer.from('x'))))[0].type, OptionReply.ErrInvalid);
  t.equal(n.option(option(Option.Abort)).next, 'close');
});

t.test('meta contexts: SET needs structured replies; base:allocation is chosen for GO', async (t) => {
  const n = new Negotiation(table);
  const setData = encodeMetaContextData('disk', ['base:allocation', 'qemu:dirty-bitmap:x']);
  t.equal(replies(n.option(option(Option.SetMetaContext, setData)))[0].type, OptionReply.ErrInvalid);
  n.option(option(Option.StructuredReply));
  const list = replies(n.option(option(Option.ListMetaContext, encodeMetaContextData('disk', []))));
  t.equal(list[0].type, OptionReply.MetaContext);
  t.equal(list[0].data.toString('utf8', 4), 'base:allocation');
  const set = replies(n.option(option(Option.SetMetaContext, setData)));
  t.same(
    set.map((x) => x.type),
    [OptionReply.MetaContext, OptionReply.Ack],
  );
  const contextId = set[0].data.readUInt32BE(0);
  const go = n.option(option(Option.Go, encodeGoData('disk', [])));
  t.ok(go.next === 'transmission' && go.session.baseAllocationId === contextId && go.session.structuredReplies);
  t.ok(go.next === 'transmission' && go.session.transmissionFlags & TransmissionFlag.SendDf);
});

t.test('option data parsers reject lengths that do not add up', async (t) => {
  t.same(parseNameAndInfos(encodeGoData('ab', [1, 3])), { name: 'ab', infos: [1, 3] });
  t.type(parseNameAndInfos(Buffer.concat([encodeGoData('ab', [1]), Buffer.from([0])])), 'string');
  t.type(parseNameAndInfos(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0])), 'string');
  t.same(parseMetaContextRequest(encodeMetaContextData('e', ['a', 'bc'])), { exportName: 'e', queries: ['a', 'bc'] });
  const bad = encodeMetaContextData('e', ['a']);
  bad.writeUInt32BE(5, 9); // a query count larger than the data
  t.type(parseMetaContextRequest(bad), 'string');
});

t.test('request checks give the errors the spec names', async (t) => {
  const n = new Negotiation(table);
  const step = n.option(option(Option.Go, encodeGoData('disk', [])));
  if (step.next !== 'transmission') throw new Error('no session');
  const session = step.session;
  const req = (
    type: number,
    offset: number,
    length: number,
    flags = 0,
    payload: Buffer | null = null,
  ): RequestMessage => ({
    kind: 'request',
    type,
    flags,
    offset,
    length,
    cookie: Buffer.alloc(8),
    payload,
  });
  const limits = { maxPayload: 65536 };
  const size = 1 << 20;
  t.equal(checkRequest(req(Command.Read, 0, 4096), session, limits), null);
  t.equal(checkRequest(req(Command.Read, size - 1, 2), session, limits), 'EINVAL');
  t.equal(checkRequest(req(Command.Read, 2 ** 60, 1), session, limits), 'EINVAL');
  t.equal(checkRequest(req(Command.Write, size, 1, 0, Buffer.alloc(1)), session, limits), 'ENOSPC');
  t.equal(checkRequest(req(Command.Write, 0, 100000, 0, null), session, limits), 'EOVERFLOW');
  t.equal(checkRequest(req(Command.Read, 0, 100000), session, limits), 'EINVAL');
  t.equal(checkRequest(req(42, 0, 0), session, limits), 'EINVAL', 'unknown command');
  t.equal(checkRequest(req(Command.Read, 0, 1, 0x100), session, limits), 'EINVAL', 'unknown flag');
  t.equal(checkRequest(req(Command.Write, 0, 1, CommandFlag.NoHole, Buffer.alloc(1)), session, limits), 'EINVAL');
  t.equal(
    checkRequest(req(Command.Read, 0, 1, CommandFlag.Df), session, limits),
    'EINVAL',
    'DF without structured replies',
  );
  t.equal(checkRequest(req(Command.BlockStatus, 0, 1), session, limits), 'EINVAL', 'no meta context');
  t.equal(
    checkRequest(req(Command.WriteZeroes, 0, size, CommandFlag.FastZero | CommandFlag.NoHole), session, limits),
    null,
  );
  t.equal(checkRequest(req(Command.Flush, 0, 0), session, limits), null);
  const ro = new Negotiation(table).option(option(Option.Go, encodeGoData('ro', [])));
  if (ro.next === 'transmission') {
    t.equal(checkRequest(req(Command.Write, 0, 1, 0, Buffer.alloc(1)), ro.session, limits), 'EPERM');
    t.equal(checkRequest(req(Command.Trim, 0, 1), ro.session, limits), 'EPERM');
  }
});

t.test('the advertised maximum block size never exceeds what the server accepts', async (t) => {
  const step = new Negotiation(table, 65536).option(option(Option.Go, encodeGoData('disk', [InfoType.BlockSize])));
  const info = replies(step).find((r) => r.data.readUInt16BE(0) === InfoType.BlockSize)!;
  t.equal(info.data.readUInt32BE(10), 65536);
});
