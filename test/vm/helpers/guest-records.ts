/**
 * The guest's table of what it wrote (its `dump`), and the check of a disk
 * image against it: every slot in the table must hold exactly the record the
 * guest last had acknowledged there, and every other slot its initial bytes.
 */
import crypto from 'node:crypto';

export const RECORD_BYTES = 4096;

export interface GuestRecord {
  slot: number;
  seq: number;
  md5: string;
}

/** Parses the guest's "FERRY REC slot seq md5" lines; throws on a line that is not one. */
export function parseDump(lines: readonly string[]): Map<number, GuestRecord> {
  const table = new Map<number, GuestRecord>();
  for (const line of lines) {
    const m = /^FERRY REC (\d+) (\d+) ([0-9a-f]{32})$/.exec(line);
    if (!m) throw new Error(`not a guest record line: ${JSON.stringify(line)}`);
    const rec = { slot: Number(m[1]), seq: Number(m[2]), md5: m[3] };
    if (table.has(rec.slot)) throw new Error(`slot ${rec.slot} appears twice in the guest's table`);
    table.set(rec.slot, rec);
  }
  return table;
}

export interface ImageCheck {
  /** Slots in the table whose record is on the image. */
  recordsMatched: number;
  /** Slots in the table holding anything else: lost or stale writes. */
  lostWrites: Array<{ slot: number; seq: number; found: string }>;
  /** Slots outside the table whose bytes differ from the initial image (writes nobody acknowledged). */
  strayChanges: number[];
}

/** What a slot of the image holds, for a report: the record header it carries, or a hash. */
function describeSlot(bytes: Buffer): string {
  const header = /^FERRY-REC slot=(\d+) seq=(\d+)\n/.exec(bytes.subarray(0, 40).toString('latin1'));
  return header ? `record slot=${Number(header[1])} seq=${Number(header[2])}` : `md5 ${md5(bytes)}`;
}

export function md5(bytes: Buffer): string {
  return crypto.createHash('md5').update(bytes).digest('hex');
}

export function checkImage(image: Buffer, initial: Buffer, table: ReadonlyMap<number, GuestRecord>): ImageCheck {
  if (image.length !== initial.length)
    throw new Error(`image is ${image.length} bytes, the initial image ${initial.length}`);
  const result: ImageCheck = { recordsMatched: 0, lostWrites: [], strayChanges: [] };
  for (let slot = 0; slot * RECORD_BYTES < image.length; slot++) {
    const at = slot * RECORD_BYTES;
    const bytes = image.subarray(at, at + RECORD_BYTES);
    const rec = table.get(slot);
    if (rec) {
      if (md5(bytes) === rec.md5) result.recordsMatched++;
      else result.lostWrites.push({ slot, seq: rec.seq, found: describeSlot(bytes) });
    } else if (!bytes.equals(initial.subarray(at, at + RECORD_BYTES))) {
      result.strayChanges.push(slot);
    }
  }
  for (const slot of table.keys())
    if (slot * RECORD_BYTES >= image.length)
      result.lostWrites.push({ slot, seq: table.get(slot)!.seq, found: 'beyond the image' });
  return result;
}
