/**
 * How the ferry wire authenticates and encrypts: TLS with a pre-shared key,
 * TLS with certificates verified both ways, or — only when asked for
 * explicitly — plain TCP.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

export type WireAuth =
  | { kind: 'psk'; key: Buffer; source: string }
  | { kind: 'cert'; cert: Buffer; key: Buffer; ca: Buffer }
  | { kind: 'insecure' };

export interface AuthFlags {
  pskFile?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
}

const PSK_IDENTITY = 'ferry';
const PSK_CIPHERS = 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305';

export function loadAuth(flags: AuthFlags, where: string): WireAuth {
  const chosen = [
    flags.pskFile ? 'psk' : null,
    flags.cert || flags.key || flags.ca ? 'cert' : null,
    flags.insecure ? 'insecure' : null,
  ].filter(Boolean);
  if (chosen.length === 0) {
    throw new Error(`${where}: the ferry wire needs --psk-file FILE, or --cert/--key/--ca, or an explicit --insecure`);
  }
  if (chosen.length > 1)
    throw new Error(
      `${where}: choose one of --psk-file, --cert/--key/--ca and --insecure (got ${chosen.join(' and ')})`,
    );
  if (flags.insecure) return { kind: 'insecure' };
  if (flags.pskFile) return { kind: 'psk', key: readPsk(flags.pskFile), source: flags.pskFile };
  const missing = (['cert', 'key', 'ca'] as const).filter((k) => !flags[k]);
  if (missing.length)
    throw new Error(
      `${where}: certificate authentication needs --cert, --key and --ca (missing ${missing.map((m) => '--' + m).join(', ')})`,
    );
  const read = (file: string, what: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (e) {
      throw new Error(`${where}: cannot read ${what} ${file}: ${(e as Error).message}`, { cause: e });
    }
  };
  return {
    kind: 'cert',
    cert: read(flags.cert!, 'certificate'),
    key: read(flags.key!, 'key'),
    ca: read(flags.ca!, 'CA'),
  };
}

/** A key file holds 32 or more random bytes as hex (as `ferry keygen` writes it). */
export function readPsk(file: string): Buffer {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new Error(`cannot read pre-shared key ${file}: ${(e as Error).message}`, { cause: e });
  }
  if (!/^([0-9a-fA-F]{2}){32,}$/.test(text)) {
    throw new Error(
      `pre-shared key ${file} must hold at least 64 hex digits (32 bytes), as \`ferry keygen --psk FILE\` writes`,
    );
  }
  return Buffer.from(text, 'hex');
}

export function createWireServer(
  auth: WireAuth,
  onConnection: (socket: net.Socket) => void,
  onAuthFailure: (reason: string, peer: string) => void,
): net.Server {
  if (auth.kind === 'insecure') return net.createServer(onConnection);
  const options: tls.TlsOptions =
    auth.kind === 'psk'
      ? {
          pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? auth.key : null),
          pskIdentityHint: PSK_IDENTITY,
          ciphers: PSK_CIPHERS,
          minVersion: 'TLSv1.2',
        }
      : {
          cert: auth.cert,
          key: auth.key,
          ca: auth.ca,
          requestCert: true,
          rejectUnauthorized: true,
          minVersion: 'TLSv1.3',
        };
  const server = tls.createServer(options, onConnection);
  server.on('tlsClientError', (err, socket) =>
    onAuthFailure(err.message, `${socket.remoteAddress}:${socket.remotePort}`),
  );
  return server;
}

export function connectWire(auth: WireAuth, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const where = `${host}:${port}`;
    let socket: net.Socket;
    const event = auth.kind === 'insecure' ? 'connect' : 'secureConnect';
    if (auth.kind === 'insecure') socket = net.connect(port, host);
    else if (auth.kind === 'psk') {
      socket = tls.connect({
        host,
        port,
        pskCallback: () => ({ psk: auth.key, identity: PSK_IDENTITY }),
        ciphers: PSK_CIPHERS,
        minVersion: 'TLSv1.2',
        checkServerIdentity: () => undefined, // the key is the identity
      });
    } else {
      socket = tls.connect({
        host,
        port,
        cert: auth.cert,
        key: auth.key,
        ca: auth.ca,
        minVersion: 'TLSv1.3',
        checkServerIdentity: () => undefined,
      });
    }
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`cannot connect to ferry source at ${where}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(event, () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      const detail = err.message.trim().replace(/\s+/g, ' ');
      const isTls = auth.kind !== 'insecure' && /alert|SSL|TLS|handshake|certificate|psk/i.test(detail);
      const message = isTls ? `TLS handshake failed (a wrong key or certificate?): ${detail}` : detail;
      reject(new Error(`cannot connect to ferry source at ${where}: ${message}`, { cause: err }));
    });
  });
}
