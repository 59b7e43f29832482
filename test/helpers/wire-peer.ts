/**
 * A bare ferry wire peer on plain TCP (a source run with --insecure), for
 * tests that send what a real destination never would: it says HELLO with
 * the fields it is given and collects whatever frames come back.
 */
import net from 'node:net';
import { encodePreamble, FrameDecoder, type Frame } from '../../src/wire/frame-codec';
import { encodeHello, type Hello } from '../../src/wire/messages';
import { MessageType, WireEncoding } from '../../src/wire/protocol';

export interface WirePeer {
  socket: net.Socket;
  /** Frames received so far. */
  frames: Frame[];
  /** Resolves with the first frame of this type (or null once the connection closes without one). */
  frame(type: MessageType, timeoutMs?: number): Promise<Frame | null>;
  closed: Promise<void>;
}

export function helloFields(fields: Partial<Hello> = {}): Hello {
  return {
    version: 2,
    role: 0,
    blockSize: 4096,
    maxBatchBlocks: 64,
    encodings: [WireEncoding.Zero, WireEncoding.Raw],
    exportName: '',
    session: 'wire-peer',
    identity: '',
    ...fields,
  };
}

export function connectWirePeer(port: number, hello?: Hello | Buffer): Promise<WirePeer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.off('error', reject);
      socket.on('error', () => undefined);
      const frames: Frame[] = [];
      const waiters = new Set<() => void>();
      const decoder = new FrameDecoder();
      let open = true;
      socket.on('data', (b: Buffer) => {
        decoder.push(b);
        for (let e = decoder.next(); e; e = decoder.next()) if (e.kind === 'frame') frames.push(e.frame);
        for (const w of waiters) w();
      });
      const closed = new Promise<void>((done) =>
        socket.once('close', () => {
          open = false;
          for (const w of waiters) w();
          done();
        }),
      );
      const frame = (type: MessageType, timeoutMs = 10_000): Promise<Frame | null> =>
        new Promise((done, fail) => {
          const check = (): void => {
            const f = frames.find((x) => x.type === type);
            if (f || !open) {
              waiters.delete(check);
              clearTimeout(timer);
              done(f ?? null);
            }
          };
          const timer = setTimeout(() => {
            waiters.delete(check);
            fail(new Error(`no frame of type ${type} within ${timeoutMs} ms`));
          }, timeoutMs);
          waiters.add(check);
          check();
        });
      socket.write(encodePreamble());
      if (hello) socket.write(Buffer.isBuffer(hello) ? hello : encodeHello(hello));
      resolve({ socket, frames, frame, closed });
    });
    socket.once('error', reject);
  });
}
