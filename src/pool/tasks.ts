// Messages between CodecPool and its workers.
export interface CodecSelection {
  codec: string;
  level?: number;
  acceleration?: number;
  kernelPath?: string;
}

export interface EncodeTask extends CodecSelection {
  op: 'encode';
  blocks: ArrayBuffer;
  blockSize: number;
}

export interface DecodeTask extends CodecSelection {
  op: 'decode';
  /** The buffer holding the payload at [payloadOffset, payloadOffset + payloadLength). */
  payload: ArrayBuffer;
  payloadOffset: number;
  payloadLength: number;
  blockSize: number;
  encodings: Uint8Array;
  lengths: Uint32Array;
  checksums: BigUint64Array;
}

export interface HashTask extends CodecSelection {
  op: 'hash';
  blocks: ArrayBuffer;
  blockSize: number;
}

export type WorkerTask = EncodeTask | DecodeTask | HashTask;
