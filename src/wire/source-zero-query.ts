/**
 * The source's answer to a ZERO_QUERY, from the image's allocation: holes
 * read as zeros, so the destination need not fetch them.
 */
import { ExtentFlags, type BlockDevice } from '../store/block-device';
import { encodeFetchError, encodeZeroRanges, type ZeroQuery, type ZeroRanges } from './messages';
import { FetchErrorCode, MAX_ZERO_RANGES } from './protocol';

/** Span one ZERO_QUERY is answered for at most (the destination asks again from where it ends). */
const MAX_ZERO_QUERY = 2 ** 40;

/** The frame that answers `query`: ZERO_RANGES, or FETCH_ERROR for a range outside the image. */
export async function answerZeroQuery(device: BlockDevice, query: ZeroQuery): Promise<Buffer> {
  const { requestId, offset } = query;
  if (query.length === 0 || offset + query.length > device.size) {
    const reason = `zero query ${offset}+${query.length} is not inside the image (${device.size} bytes)`;
    return encodeFetchError({ requestId, code: FetchErrorCode.OutOfRange, reason });
  }
  const extents = await device.status(offset, Math.min(query.length, MAX_ZERO_QUERY));
  const ranges: ZeroRanges['ranges'] = [];
  let at = offset;
  for (const e of extents) {
    if (e.flags & ExtentFlags.Zero) {
      if (ranges.length === MAX_ZERO_RANGES) break;
      const last = ranges[ranges.length - 1];
      if (last && last.offset + last.length === at) last.length += e.length;
      else ranges.push({ offset: at, length: e.length });
    }
    at += e.length;
  }
  const end =
    ranges.length === MAX_ZERO_RANGES ? ranges[ranges.length - 1].offset + ranges[ranges.length - 1].length : at;
  // No extent at all (never expected) answers "data" for the whole range rather than stalling the scan.
  const covered = end > offset ? end - offset : query.length;
  return encodeZeroRanges({ requestId, offset, covered, ranges });
}
