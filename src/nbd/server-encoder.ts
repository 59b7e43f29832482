/**
 * Server → client NBD messages as bytes. Pure. Headers are built in small
 * fresh buffers (the socket keeps them until sent); payloads are passed on
 * untouched so a READ reply is never copied.
 */
import type { Extent } from '../store/block-device';
import {
  HandshakeFlag,
  IHAVEOPT,
  NBDMAGIC,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  InfoType,
  OptionReply,
} from './protocol';

export function greeting(): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes, 16);
  return b;
}

export function optionReply(option: number, type: number, data?: Buffer): Buffer {
  const length = data ? data.length : 0;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(length, 16);
  if (data) data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export function optionError(option: number, type: OptionReply, message: string): Buffer {
  return optionReply(option, type, Buffer.from(message, 'utf8'));
}

/** NBD_REP_SERVER for LIST: name length, name, then the description. */
export function serverReply(option: number, name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const data = Buffer.concat([u32(nameBytes.length), nameBytes, Buffer.from(description, 'utf8')]);
  return optionReply(option, OptionReply.Server, data);
}

export function infoExport(option: number, size: number, transmissionFlags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(InfoType.Export, 0);
  writeU64(data, 2, size);
  data.writeUInt16BE(transmissionFlags, 10);
  return optionReply(option, OptionReply.Info, data);
}

export function infoString(option: number, type: InfoType.Name | InfoType.Description, text: string): Buffer {
  const data = Buffer.concat([u16(type), Buffer.from(text, 'utf8')]);
  return optionReply(option, OptionReply.Info, data);
}

export function infoBlockSize(option: number, minimum: number, preferred: number, maximum: number): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(InfoType.BlockSize, 0);
  data.writeUInt32BE(minimum, 2);
  data.writeUInt32BE(preferred, 6);
  data.writeUInt32BE(maximum, 10);
  return optionReply(option, OptionReply.Info, data);
}

export function metaContextReply(option: number, id: number, name: string): Buffer {
  return optionReply(option, OptionReply.MetaContext, Buffer.concat([u32(id), Buffer.from(name, 'utf8')]));
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeros unless NO_ZEROES was agreed. */
export function exportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(b, 0, size);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export function simpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

function structuredHeader(b: Buffer, flags: number, type: number, cookie: Buffer, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
}

/** Header of an OFFSET_DATA chunk; the data follows it on the wire. */
export function offsetDataHeader(cookie: Buffer, offset: number, dataLength: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 8);
  structuredHeader(b, done ? ReplyFlag.Done : 0, ReplyType.OffsetData, cookie, 8 + dataLength);
  writeU64(b, STRUCTURED_REPLY_HEADER_SIZE, offset);
  return b;
}

export function noneChunk(cookie: Buffer): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE);
  structuredHeader(b, ReplyFlag.Done, ReplyType.None, cookie, 0);
  return b;
}

export function errorChunk(cookie: Buffer, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1024), 'utf8');
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 6 + text.length);
  structuredHeader(b, ReplyFlag.Done, ReplyType.Error, cookie, 6 + text.length);
  b.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  text.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

export function blockStatusChunk(cookie: Buffer, contextId: number, extents: readonly Extent[], done: boolean): Buffer {
  const length = 4 + extents.length * 8;
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + length);
  structuredHeader(b, done ? ReplyFlag.Done : 0, ReplyType.BlockStatus, cookie, length);
  b.writeUInt32BE(contextId, STRUCTURED_REPLY_HEADER_SIZE);
  let at = STRUCTURED_REPLY_HEADER_SIZE + 4;
  for (const extent of extents) {
    b.writeUInt32BE(extent.length, at);
    b.writeUInt32BE(extent.flags, at + 4);
    at += 8;
  }
  return b;
}

function writeU64(b: Buffer, at: number, value: number): void {
  b.writeUInt32BE(Math.floor(value / 0x100000000), at);
  b.writeUInt32BE(value >>> 0, at + 4);
}

function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(value, 0);
  return b;
}

function u16(value: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(value, 0);
  return b;
}
