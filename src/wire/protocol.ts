/**
 * ferry wire constants (docs/wire-protocol.md). One name per wire value;
 * never renumber.
 */

export const PREAMBLE_MAGIC = 'FERRY';
export const WIRE_VERSION = 2;
export const PREAMBLE_SIZE = 8;
export const FRAME_HEADER_SIZE = 16;
export const MAX_META = 1 << 20;
export const MAX_PAYLOAD = 64 << 20;
export const MAX_STRING = 4096;
/** Ranges in one ZERO_RANGES reply at most (16 bytes each). */
export const MAX_ZERO_RANGES = 4096;
/** Ranges in one DIRTY or CUTOVER frame at most (16 bytes each). */
export const MAX_DIRTY_RANGES = MAX_ZERO_RANGES;
export const ENTRY_SIZE = 16;

export const enum MessageType {
  Hello = 1,
  Welcome = 2,
  Refuse = 3,
  Fetch = 4,
  Batch = 5,
  FetchError = 6,
  ZeroQuery = 7,
  ZeroRanges = 8,
  /** Writes the source took: blocks the destination may hold stale copies of. */
  Dirty = 9,
  /** The destination made a DIRTY (or CUTOVER) durable. */
  DirtyAck = 10,
  /** The destination asks the source to fence itself and send the final write set. */
  CutoverRequest = 11,
  /** The final write set of a fenced source (one or more frames, the last with Final). */
  Cutover = 12,
  /** The destination asks for the SHA-256 of each block of a range (to find them in its seed). */
  HashQuery = 13,
  /** The answer to a HASH_QUERY. */
  BlockHashes = 14,
  /** The rate the destination asks the session's background batches to leave at. */
  Pace = 15,
}

/** WELCOME's frame flags: what else the source answers. */
export const enum WelcomeFlag {
  /** The source answers HASH_QUERY. */
  BlockHashes = 1,
  /** The source paces its background batches at the rate a PACE asks. */
  Pacing = 2,
}

/** Blocks one HASH_QUERY may ask about; their hashes fit the metadata section. */
export const MAX_HASH_BLOCKS = 8192;

/** WELCOME's tracking field: how the source reports its writes. */
export const enum Tracking {
  None = 0,
  Stream = 1,
}

export const enum FrameFlag {
  /** BATCH: the last batch answering its FETCH; CUTOVER: the last frame of the set. */
  Final = 1,
}

export const enum Role {
  Urgent = 0,
  Background = 1,
}

export const enum FetchFlag {
  /** The destination could not use a reference: send bytes. */
  NoReferences = 1,
}

/** Block encodings on the wire: the data plane's, plus a reference to earlier content. */
export const enum WireEncoding {
  Zero = 0,
  Raw = 1,
  Lz4 = 2,
  Deflate = 3,
  Reference = 4,
}

export const enum RefuseCode {
  Version = 1,
  UnknownExport = 2,
  IdentityMismatch = 3,
  BadRequest = 4,
  ShuttingDown = 5,
}

export const enum FetchErrorCode {
  OutOfRange = 1,
  ReadError = 2,
  BadRequest = 3,
}
