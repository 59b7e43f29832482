/**
 * The source's cutover record: what is written reads back as it was, and a
 * damaged record is refused naming the file and the field at fault.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { readCutoverRecord, writeCutoverRecord, type CutoverRecord } from '../src/wire/cutover-record';
import { tempDir } from './helpers/temp-dir';

const record: CutoverRecord = {
  version: 1,
  image: '/i/disk.img',
  identity: 'abc',
  imageSize: 1 << 20,
  fencedAt: '2026-01-01T00:00:00.000Z',
  sessions: {
    s1: {
      blockSize: 4096,
      epoch: 'e1',
      seq: 3,
      ranges: [
        [0, 4096],
        [65_536, 8192],
      ],
      acked: false,
    },
  },
};

t.test('a written record reads back as it was; none is null', async (t) => {
  const file = path.join(tempDir(t), 'state', 'r.cutover.json');
  t.equal(readCutoverRecord(file), null);
  writeCutoverRecord(file, record);
  t.same(readCutoverRecord(file), record);
});

t.test('a damaged record is refused naming the file and the field', async (t) => {
  const file = path.join(tempDir(t), 'r.cutover.json');
  const refused = (
    edit: (r: Record<string, unknown> & { sessions: Record<string, Record<string, unknown>> }) => void,
  ) => {
    const damaged = JSON.parse(JSON.stringify(record)) as Parameters<typeof edit>[0];
    edit(damaged);
    fs.writeFileSync(file, JSON.stringify(damaged));
    try {
      readCutoverRecord(file);
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error('expected the record to be refused');
  };
  const where = `cutover record ${file} is damaged: `;
  t.equal(
    refused((r) => (r.sessions.s1.seq = 0)),
    `${where}sessions.s1.seq: must be greater than 0`,
  );
  t.equal(
    refused((r) => (r.sessions.s1.ranges = [[0, 4096, 1]])),
    `${where}sessions.s1.ranges.0.2: is not expected here`,
  );
  t.equal(
    refused((r) => (r.sessions.s1.ranges = [[-1, 4096]])),
    `${where}sessions.s1.ranges.0.0: must be at least 0`,
  );
  t.equal(
    refused((r) => (r.version = 2)),
    `${where}version: must be 1`,
  );
  t.equal(
    refused((r) => (r.owner = 'me')),
    `${where}owner: is not a known key`,
  );
  t.equal(
    refused((r) => delete r.identity),
    `${where}identity: is missing`,
  );
  fs.writeFileSync(file, '5');
  t.throws(() => readCutoverRecord(file), { message: `${where}(top): must be an object` });
  fs.writeFileSync(file, '{"version":');
  t.throws(() => readCutoverRecord(file), /is not valid JSON .*the source stays down/);
});
