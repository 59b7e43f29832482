/**
 * The source's answer to a HASH_QUERY: the SHA-256 of each block asked
 * about, so a destination can take equal blocks from its seed image.
 */
import type { BlockDevice } from '../store/block-device';
import { hashBlocks } from '../util/block-hash';
import { encodeBlockHashes, encodeFetchError, type HashQuery } from './messages';
import { FetchErrorCode } from './protocol';

/** The frame that answers `query`: BLOCK_HASHES, or FETCH_ERROR for blocks outside the image. */
export async function answerHashQuery(device: BlockDevice, blockSize: number, query: HashQuery): Promise<Buffer> {
  const { requestId, offset, count } = query;
  if (offset % blockSize !== 0 || offset >= device.size || offset + (count - 1) * blockSize >= device.size) {
    const reason = `hash query of ${count} blocks at ${offset} is not whole blocks inside the image (${device.size} bytes)`;
    return encodeFetchError({ requestId, code: FetchErrorCode.OutOfRange, reason });
  }
  const data = Buffer.allocUnsafe(Math.min(count * blockSize, device.size - offset));
  await device.read(offset, data);
  return encodeBlockHashes({ requestId, offset, count, hashes: hashBlocks(data, blockSize) });
}
