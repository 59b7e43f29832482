/**
 * A minimal NBD server of the kinds that predate NBD_OPT_GO (xnbd-server,
 * old nbd-server): oldstyle (the export's size and flags right after the
 * greeting), plain newstyle (NBD_OPT_EXPORT_NAME is the only option), or
 * fixed newstyle that answers every other option "unsupported". It
 * serves an in-memory image read-only with simple replies, and is strict
 * where the spec lets such a server be: any other option, an unknown export
 * or client flags it did not advertise end the connection. It shares no code
 * with ferry.
 */
import net from 'node:net';

export type LegacyStyle = 'oldstyle' | 'newstyle' | 'fixed-newstyle-without-go';

export interface LegacyServerOptions {
  style: LegacyStyle;
  image: Buffer;
  /** Newstyle: the one export name it accepts. */
  exportName?: string;
  /** Newstyle: advertise NBD_FLAG_NO_ZEROES (the 124 zero bytes after the export are then skipped if the client agrees). */
  noZeroes?: boolean;
}

export interface LegacyServer {
  port: number;
  /** Connections that reached transmission. */
  readonly sessions: number;
  close(): Promise<void>;
}

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1');
const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');
const CLISERV_MAGIC = 0x00420281861253n;
const OPT_EXPORT_NAME = 1;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REP_ERR_UNSUP = 0x80000001;
const FLAG_HAS_FLAGS = 1;
const FLAG_READ_ONLY = 2;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const EPERM = 1;
const EINVAL = 22;

export async function startLegacyNbdServer(t: Teardownable, options: LegacyServerOptions): Promise<LegacyServer> {
  let sessions = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    serve(socket, options, () => sessions++).catch(() => socket.destroy()); // a broken peer ends its session
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.teardown(close);
  return {
    port: (server.address() as net.AddressInfo).port,
    get sessions() {
      return sessions;
    },
    close,
  };
}

/** Feeds a socket's bytes to a reader that asks for exact counts. */
class Bytes {
  private buffer = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended = false;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.deliver();
    });
    socket.on('close', () => {
      this.ended = true;
      this.deliver();
    });
  }

  take(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.deliver();
    });
  }

  private deliver(): void {
    const w = this.want;
    if (!w) return;
    if (this.buffer.length >= w.n) {
      this.want = null;
      const out = this.buffer.subarray(0, w.n);
      this.buffer = this.buffer.subarray(w.n);
      w.resolve(out);
    } else if (this.ended) {
      this.want = null;
      w.reject(new Error('client went away'));
    }
  }
}

async function serve(socket: net.Socket, options: LegacyServerOptions, onSession: () => void): Promise<void> {
  const input = new Bytes(socket);
  const size = BigInt(options.image.length);
  const transmissionFlags = FLAG_HAS_FLAGS | FLAG_READ_ONLY;
  try {
    if (options.style === 'oldstyle') {
      const greeting = Buffer.alloc(152);
      NBDMAGIC.copy(greeting, 0);
      greeting.writeBigUInt64BE(CLISERV_MAGIC, 8);
      greeting.writeBigUInt64BE(size, 16);
      greeting.writeUInt32BE(transmissionFlags, 24); // handshake flags (none) in the upper 16 bits
      socket.write(greeting);
    } else {
      const fixed = options.style === 'fixed-newstyle-without-go';
      const handshakeFlags = (fixed ? 1 : 0) | (options.noZeroes ? 2 : 0);
      const greeting = Buffer.alloc(18);
      NBDMAGIC.copy(greeting, 0);
      IHAVEOPT.copy(greeting, 8);
      greeting.writeUInt16BE(handshakeFlags, 16);
      socket.write(greeting);
      const clientFlags = (await input.take(4)).readUInt32BE(0);
      if (clientFlags & ~handshakeFlags) return void socket.destroy(); // a flag it did not advertise
      let option: number;
      let name: string;
      for (;;) {
        const header = await input.take(16);
        if (!header.subarray(0, 8).equals(IHAVEOPT)) return void socket.destroy();
        option = header.readUInt32BE(8);
        name = (await input.take(header.readUInt32BE(12))).toString('utf8');
        if (option === OPT_EXPORT_NAME || !fixed) break;
        const unsupported = Buffer.alloc(20);
        unsupported.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
        unsupported.writeUInt32BE(option, 8);
        unsupported.writeUInt32BE(REP_ERR_UNSUP, 12);
        socket.write(unsupported);
      }
      // Plain newstyle knows one option; an unknown export ends the session too.
      if (option !== OPT_EXPORT_NAME || name !== (options.exportName ?? '')) return void socket.destroy();
      const zeroes = clientFlags & 2 ? 0 : 124;
      const reply = Buffer.alloc(10 + zeroes);
      reply.writeBigUInt64BE(size, 0);
      reply.writeUInt16BE(transmissionFlags, 8);
      socket.write(reply);
    }
    onSession();
    for (;;) {
      const request = await input.take(28);
      if (request.readUInt32BE(0) !== REQUEST_MAGIC) return void socket.destroy();
      const type = request.readUInt16BE(6);
      const cookie = request.subarray(8, 16);
      const offset = Number(request.readBigUInt64BE(16));
      const length = request.readUInt32BE(24);
      if (type === CMD_DISC) return void socket.end();
      if (type === CMD_WRITE) await input.take(length);
      const inside = offset + length <= options.image.length;
      const error = type === CMD_READ ? (inside ? 0 : EINVAL) : type === CMD_WRITE ? EPERM : EINVAL;
      const head = Buffer.alloc(16);
      head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
      head.writeUInt32BE(error, 4);
      cookie.copy(head, 8);
      socket.write(head);
      if (type === CMD_READ && !error) socket.write(options.image.subarray(offset, offset + length));
    }
  } catch {
    socket.destroy(); // the client went away
  }
}
