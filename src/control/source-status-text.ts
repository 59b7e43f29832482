/** `ferry ctl status` for a ferry source: fenced or not, and each destination session's reports. */
import type { SourceStatus } from '../wire/source-sessions';

export function isSourceStatus(status: object): status is SourceStatus {
  return (status as { role?: unknown }).role === 'source';
}

/** The pace the destination asked for, as a link rate. */
function pace(bytesPerSecond: number): string {
  return bytesPerSecond > 0 ? `, background paced at ${((bytesPerSecond * 8) / 1e6).toFixed(1)} Mbit/s` : '';
}

export function formatSourceStatus(s: SourceStatus): string {
  const lines = [
    `source: write tracking ${s.tracking}, ${s.fenced ? 'FENCED (NBD writes refused)' : 'taking writes'}` +
      (s.refusedWrites ? `, ${s.refusedWrites} writes refused` : ''),
  ];
  if (s.cutoverRecord) lines.push(`cutover record: ${s.cutoverRecord}`);
  if (s.sessions.length === 0) lines.push('no destination sessions');
  for (const x of s.sessions) {
    const link = x.connections
      ? `${x.connections} connections${x.urgentConnected ? '' : ' (no urgent)'}`
      : 'disconnected';
    const cut = x.cutover
      ? `, final set #${x.cutover.seq}: ${x.cutover.ranges} ranges, ${x.cutover.bytes} bytes, ${x.cutover.acked ? 'acknowledged' : 'not acknowledged'}`
      : '';
    lines.push(
      `session ${x.id}: ${link}, block size ${x.blockSize}, ${x.pendingBlocks} blocks to report, ` +
        `${x.unackedReports} reports unacknowledged, ${x.reportsSent} sent${pace(x.pacedBytesPerSecond)}${cut}`,
    );
  }
  return lines.join('\n') + '\n';
}
