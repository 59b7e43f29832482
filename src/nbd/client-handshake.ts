/**
 * What the client learns from the server's option replies: the export's size
 * and flags and its block size limits (NBD_OPT_GO's NBD_REP_INFO replies),
 * the ids of the meta contexts it agreed to, and what a refusal means. Pure:
 * replies in, facts out.
 */
import { InfoType, OptionReply } from './protocol';

export interface OptionReplyData {
  type: number;
  data: Buffer;
}

export interface ExportInfo {
  size: number;
  transmissionFlags: number;
  blockSize: { minimum: number; preferred: number; maximum: number } | null;
}

/** NBD_REP_INFO payloads: the info type (2), then NBD_INFO_EXPORT size (8) + flags (2), or NBD_INFO_BLOCK_SIZE min/preferred/max (3 × 4). */
const INFO_TYPE_BYTES = 2;
const INFO_EXPORT_BYTES = INFO_TYPE_BYTES + 8 + 2;
const INFO_BLOCK_SIZE_BYTES = INFO_TYPE_BYTES + 3 * 4;
/** NBD_REP_META_CONTEXT payload: the context id (4), then its name. */
const META_CONTEXT_ID_BYTES = 4;

/** An option's last reply is its ACK or an error (the high bit set). */
export function isFinalOptionReply(type: number): boolean {
  return type === OptionReply.Ack || (type & 0x80000000) !== 0;
}

export function readExportInfo(replies: OptionReplyData[]): ExportInfo {
  const info: ExportInfo = { size: 0, transmissionFlags: 0, blockSize: null };
  for (const r of replies) {
    if (r.type !== OptionReply.Info || r.data.length < INFO_TYPE_BYTES) continue;
    const type = r.data.readUInt16BE(0);
    if (type === InfoType.Export && r.data.length >= INFO_EXPORT_BYTES) {
      info.size = r.data.readUInt32BE(2) * 0x100000000 + r.data.readUInt32BE(6);
      info.transmissionFlags = r.data.readUInt16BE(10);
    } else if (type === InfoType.BlockSize && r.data.length >= INFO_BLOCK_SIZE_BYTES) {
      info.blockSize = {
        minimum: r.data.readUInt32BE(2),
        preferred: r.data.readUInt32BE(6),
        maximum: r.data.readUInt32BE(10),
      };
    }
  }
  return info;
}

/** The ids of the contexts in `wanted` that the server agreed to (an id may be 0). */
export function readMetaContexts(replies: OptionReplyData[], wanted: string[]): Map<string, number> {
  const ids = new Map<string, number>();
  for (const r of replies) {
    if (r.type !== OptionReply.MetaContext || r.data.length < META_CONTEXT_ID_BYTES) continue;
    const name = r.data.toString('utf8', META_CONTEXT_ID_BYTES);
    if (wanted.includes(name)) ids.set(name, r.data.readUInt32BE(0));
  }
  return ids;
}

export function optionReplyName(type: number): string {
  switch (type) {
    case OptionReply.ErrUnknown:
      return 'unknown export';
    case OptionReply.ErrUnsup:
      return 'unsupported';
    case OptionReply.ErrPolicy:
      return 'refused by policy';
    case OptionReply.ErrInvalid:
      return 'invalid request';
    case OptionReply.ErrTlsReqd:
      return 'TLS required';
    case OptionReply.ErrShutdown:
      return 'server shutting down';
    default:
      return `error 0x${type.toString(16)}`;
  }
}
