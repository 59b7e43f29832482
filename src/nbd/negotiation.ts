/**
 * The handshake's option haggling as a pure state machine: an option in,
 * the bytes to answer with and what happens next out. No sockets.
 */
import type { BlockDevice } from '../store/block-device';
import { BASE_ALLOCATION, ClientFlag, InfoType, MAX_STRING, Option, OptionReply, TransmissionFlag } from './protocol';
import * as enc from './server-encoder';
import type { OptionMessage } from './server-decoder';

export interface NbdExport {
  name: string;
  description: string;
  device: BlockDevice;
}

/** Looks exports up by name; the empty name is the default export. */
export interface ExportTable {
  find(name: string): NbdExport | undefined;
  list(): NbdExport[];
}

export interface NegotiatedSession {
  export: NbdExport;
  structuredReplies: boolean;
  /** The context id for base:allocation, or 0 when not negotiated. */
  baseAllocationId: number;
  transmissionFlags: number;
}

export type NegotiationStep =
  | { replies: Buffer[]; next: 'continue' }
  | { replies: Buffer[]; next: 'close'; reason: string }
  | { replies: Buffer[]; next: 'transmission'; session: NegotiatedSession };

export const BASE_ALLOCATION_ID = 1;

export class Negotiation {
  private noZeroes = false;
  private structuredReplies = false;
  private metaContextExport: string | null = null; // export SET_META_CONTEXT chose base:allocation for

  /** maxPayload: the largest request the server accepts, so the advertised maximum block size never exceeds it. */
  constructor(
    private readonly exportTable: ExportTable,
    private readonly maxPayload = Infinity,
  ) {}

  /** Returns a reason to close when the client's flags are not acceptable. */
  clientFlags(flags: number): string | null {
    if ((flags & ~(ClientFlag.FixedNewstyle | ClientFlag.NoZeroes)) !== 0) {
      return `unknown client flags 0x${flags.toString(16)}`;
    }
    this.noZeroes = (flags & ClientFlag.NoZeroes) !== 0;
    return null;
  }

  option(message: OptionMessage): NegotiationStep {
    const { option, data } = message;
    if (data === null) {
      if (option === Option.ExportName) return close(`export name of ${message.length} bytes is too long`);
      return reply(
        enc.optionError(option, OptionReply.ErrTooBig, `option data of ${message.length} bytes is too long`),
      );
    }
    switch (option) {
      case Option.ExportName:
        return this.exportName(data);
      case Option.Abort:
        return {
          replies: [enc.optionReply(option, OptionReply.Ack)],
          next: 'close',
          reason: 'client sent NBD_OPT_ABORT',
        };
      case Option.List:
        return this.list(data);
      case Option.Info:
      case Option.Go:
        return this.infoOrGo(option, data);
      case Option.StructuredReply:
        if (data.length !== 0) return invalid(option, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structuredReplies = true;
        return reply(enc.optionReply(option, OptionReply.Ack));
      case Option.ListMetaContext:
      case Option.SetMetaContext:
        return this.metaContext(option, data);
      default:
        return reply(enc.optionError(option, OptionReply.ErrUnsup, `option ${option} is not supported`));
    }
  }

  private exportName(data: Buffer): NegotiationStep {
    const name = data.toString('utf8');
    const found = this.exportTable.find(name);
    if (!found) return close(`unknown export "${name}"`);
    const session = this.session(found);
    return {
      replies: [enc.exportNameReply(found.device.size, session.transmissionFlags, this.noZeroes)],
      next: 'transmission',
      session,
    };
  }

  private list(data: Buffer): NegotiationStep {
    if (data.length !== 0) return invalid(Option.List, 'NBD_OPT_LIST takes no data');
    const replies = this.exportTable.list().map((e) => enc.serverReply(Option.List, e.name, e.description));
    replies.push(enc.optionReply(Option.List, OptionReply.Ack));
    return { replies, next: 'continue' };
  }

  private infoOrGo(option: number, data: Buffer): NegotiationStep {
    const parsed = parseNameAndInfos(data);
    if (typeof parsed === 'string') return invalid(option, parsed);
    const found = this.exportTable.find(parsed.name);
    if (!found) return reply(enc.optionError(option, OptionReply.ErrUnknown, `unknown export "${parsed.name}"`));
    const session = this.session(found);
    const replies = [enc.infoExport(option, found.device.size, session.transmissionFlags)];
    for (const info of new Set(parsed.infos)) {
      if (info === InfoType.Name) replies.push(enc.infoString(option, InfoType.Name, found.name));
      else if (info === InfoType.Description)
        replies.push(enc.infoString(option, InfoType.Description, found.description));
      else if (info === InfoType.BlockSize) {
        const b = found.device.blockSize;
        replies.push(enc.infoBlockSize(option, b.minimum, b.preferred, Math.min(b.maximum, this.maxPayload)));
      }
    }
    replies.push(enc.optionReply(option, OptionReply.Ack));
    if (option === Option.Info) return { replies, next: 'continue' };
    return { replies, next: 'transmission', session };
  }

  private metaContext(option: number, data: Buffer): NegotiationStep {
    const set = option === Option.SetMetaContext;
    if (set && !this.structuredReplies) {
      return invalid(option, 'NBD_OPT_SET_META_CONTEXT needs structured replies first');
    }
    const parsed = parseMetaContextRequest(data);
    if (typeof parsed === 'string') return invalid(option, parsed);
    if (!this.exportTable.find(parsed.exportName)) {
      return reply(enc.optionError(option, OptionReply.ErrUnknown, `unknown export "${parsed.exportName}"`));
    }
    const matches = (query: string): boolean => query === BASE_ALLOCATION || (!set && query === 'base:');
    const chosen = set ? parsed.queries.some(matches) : parsed.queries.length === 0 || parsed.queries.some(matches);
    const replies: Buffer[] = [];
    if (chosen) replies.push(enc.metaContextReply(option, set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION));
    if (set) this.metaContextExport = chosen ? parsed.exportName : null;
    replies.push(enc.optionReply(option, OptionReply.Ack));
    return { replies, next: 'continue' };
  }

  private session(found: NbdExport): NegotiatedSession {
    const device = found.device;
    let flags =
      TransmissionFlag.HasFlags |
      TransmissionFlag.SendFlush |
      TransmissionFlag.SendFua |
      TransmissionFlag.SendWriteZeroes |
      TransmissionFlag.SendCache |
      TransmissionFlag.CanMultiConn;
    if (device.readOnly) flags |= TransmissionFlag.ReadOnly;
    if (device.canTrim) flags |= TransmissionFlag.SendTrim;
    if (device.canFastZero) flags |= TransmissionFlag.SendFastZero;
    if (this.structuredReplies) flags |= TransmissionFlag.SendDf;
    const contextMatches = this.metaContextExport !== null && this.exportTable.find(this.metaContextExport) === found;
    return {
      export: found,
      structuredReplies: this.structuredReplies,
      baseAllocationId: this.structuredReplies && contextMatches ? BASE_ALLOCATION_ID : 0,
      transmissionFlags: flags,
    };
  }
}

function reply(buffer: Buffer): NegotiationStep {
  return { replies: [buffer], next: 'continue' };
}

function invalid(option: number, message: string): NegotiationStep {
  return reply(enc.optionError(option, OptionReply.ErrInvalid, message));
}

function close(reason: string): NegotiationStep {
  return { replies: [], next: 'close', reason };
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, u16 info types. */
export function parseNameAndInfos(data: Buffer): { name: string; infos: number[] } | string {
  if (data.length < 6) return 'option data too short';
  const nameLength = data.readUInt32BE(0);
  if (nameLength > MAX_STRING || 4 + nameLength + 2 > data.length) return 'export name length does not fit the option';
  const name = data.toString('utf8', 4, 4 + nameLength);
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 4 + nameLength + 2 + count * 2)
    return 'information request count does not match the option length';
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(4 + nameLength + 2 + i * 2));
  return { name, infos };
}

/** META_CONTEXT data: u32 name length, name, u32 query count, then (u32 length, query) each. */
export function parseMetaContextRequest(data: Buffer): { exportName: string; queries: string[] } | string {
  if (data.length < 8) return 'option data too short';
  const nameLength = data.readUInt32BE(0);
  if (nameLength > MAX_STRING || 4 + nameLength + 4 > data.length) return 'export name length does not fit the option';
  const exportName = data.toString('utf8', 4, 4 + nameLength);
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return 'query count does not match the option length';
    const length = data.readUInt32BE(at);
    at += 4;
    if (length > MAX_STRING || at + length > data.length) return 'query length does not fit the option';
    queries.push(data.toString('utf8', at, at + length));
    at += length;
  }
  if (at !== data.length) return 'trailing bytes after the queries';
  return { exportName, queries };
}
