/**
 * NBD wire constants (NetworkBlockDevice/nbd doc/proto.md), fixed newstyle.
 * One name per wire value; the value is the spec's.
 */

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
/** Second magic of the oldstyle greeting. */
export const CLISERV_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, u16). */
export const enum HandshakeFlag {
  FixedNewstyle = 1 << 0,
  NoZeroes = 1 << 1,
}

/** Client flags (u32). */
export const enum ClientFlag {
  FixedNewstyle = 1 << 0,
  NoZeroes = 1 << 1,
}

export const enum Option {
  ExportName = 1,
  Abort = 2,
  List = 3,
  PeekExport = 4,
  StartTls = 5,
  Info = 6,
  Go = 7,
  StructuredReply = 8,
  ListMetaContext = 9,
  SetMetaContext = 10,
  ExtendedHeaders = 11,
}

export const enum OptionReply {
  Ack = 1,
  Server = 2,
  Info = 3,
  MetaContext = 4,
  ErrUnsup = 0x80000001,
  ErrPolicy = 0x80000002,
  ErrInvalid = 0x80000003,
  ErrPlatform = 0x80000004,
  ErrTlsReqd = 0x80000005,
  ErrUnknown = 0x80000006,
  ErrShutdown = 0x80000007,
  ErrBlockSizeReqd = 0x80000008,
  ErrTooBig = 0x80000009,
}

export const enum InfoType {
  Export = 0,
  Name = 1,
  Description = 2,
  BlockSize = 3,
}

/** Transmission flags (u16). */
export const enum TransmissionFlag {
  HasFlags = 1 << 0,
  ReadOnly = 1 << 1,
  SendFlush = 1 << 2,
  SendFua = 1 << 3,
  Rotational = 1 << 4,
  SendTrim = 1 << 5,
  SendWriteZeroes = 1 << 6,
  SendDf = 1 << 7,
  CanMultiConn = 1 << 8,
  SendResize = 1 << 9,
  SendCache = 1 << 10,
  SendFastZero = 1 << 11,
}

export const enum Command {
  Read = 0,
  Write = 1,
  Disc = 2,
  Flush = 3,
  Trim = 4,
  Cache = 5,
  WriteZeroes = 6,
  BlockStatus = 7,
}

export const enum CommandFlag {
  Fua = 1 << 0,
  NoHole = 1 << 1,
  Df = 1 << 2,
  ReqOne = 1 << 3,
  FastZero = 1 << 4,
}

export const enum ReplyFlag {
  Done = 1 << 0,
}

export const enum ReplyType {
  None = 0,
  OffsetData = 1,
  OffsetHole = 2,
  BlockStatus = 5,
  Error = 0x8001,
  ErrorOffset = 0x8002,
}

/** NBD error values: the Linux errno numbers the spec fixes. */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrnoName = keyof typeof NbdErrno;

export const BASE_ALLOCATION = 'base:allocation';

/** Fixed sizes of the framed messages. */
export const OPTION_HEADER_SIZE = 16; // IHAVEOPT u64, option u32, length u32
export const REQUEST_HEADER_SIZE = 28; // magic u32, flags u16, type u16, cookie u64, offset u64, length u32
export const SIMPLE_REPLY_HEADER_SIZE = 16; // magic u32, error u32, cookie u64
export const STRUCTURED_REPLY_HEADER_SIZE = 20; // magic u32, flags u16, type u16, cookie u64, length u32
export const OPTION_REPLY_HEADER_SIZE = 20; // magic u64, option u32, type u32, length u32
export const OLDSTYLE_GREETING_SIZE = 152; // NBDMAGIC u64, cliserv magic u64, size u64, flags u32, 124 zeroes
export const EXPORT_NAME_REPLY_SIZE = 10; // size u64, transmission flags u16 (then 124 zeroes unless NO_ZEROES)
/** Names and strings are at most 4096 bytes by the spec. */
export const MAX_STRING = 4096;

export const COMMAND_NAMES: Record<number, string> = {
  0: 'READ',
  1: 'WRITE',
  2: 'DISC',
  3: 'FLUSH',
  4: 'TRIM',
  5: 'CACHE',
  6: 'WRITE_ZEROES',
  7: 'BLOCK_STATUS',
};
