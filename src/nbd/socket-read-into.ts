/**
 * Makes an accepted connection read into buffers its reader lends, instead
 * of a fresh 64 KiB chunk per read: a 1 MiB WRITE then arrives in one or two
 * reads straight into its payload buffer, where the chunked stream cost
 * sixteen reads, sixteen JS callbacks, sixteen allocations and a copy (a
 * plain sink of 1 MiB sends measured ~3× faster this way).
 *
 * net.Socket takes this `onread` option only when it is built, and net.Server
 * builds its sockets without it, so the accepted socket's handle moves into a
 * new Socket that has it. The accepted socket stays, handle-less and paused,
 * until the new one closes, so the server's connection count and close()
 * still see the connection. The server must accept with pauseOnConnect (no
 * byte may be read before the move).
 */
import net from 'node:net';
import { fileOps } from '../store/fileops';

/** A payload's rest beyond this is still waited for in pieces this large. */
const MAX_LOW_WATER = 4 << 20;

export interface ReadLender {
  /** Where the next read puts its bytes. */
  target(): Buffer;
  /** That many bytes were read into the last target. */
  received(n: number): void;
  /** Bytes the next read may wait for (a large payload's rest), so the socket wakes once for them. */
  wanted?(): number;
}

/** The socket to use from now on, or null when this Node cannot move the handle (then read as usual). */
export function readIntoLentBuffers(accepted: net.Socket, lender: ReadLender): net.Socket | null {
  const holder = accepted as unknown as { _handle?: object | null };
  const handle = holder._handle;
  if (!handle || accepted.bytesRead !== 0 || !accepted.isPaused()) return null;
  holder._handle = null;
  const fd = (handle as { fd?: number }).fd;
  const setLowWater = fileOps?.setReceiveLowWater;
  const wanted = lender.wanted?.bind(lender);
  let lowWater = 1;
  const options: net.SocketConstructorOpts & net.ConnectOpts & { handle: object } = {
    handle,
    readable: true,
    writable: true,
    onread: {
      buffer: () => lender.target(),
      callback: (n) => {
        lender.received(n);
        if (wanted && setLowWater && typeof fd === 'number' && fd >= 0) {
          const want = Math.min(wanted(), MAX_LOW_WATER);
          if (want !== lowWater) {
            lowWater = want;
            setLowWater(fd, want);
          }
        }
        return true;
      },
    },
  };
  const socket = new net.Socket(options);
  socket.once('close', () => accepted.destroy());
  return socket;
}
