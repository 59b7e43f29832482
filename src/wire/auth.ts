/**
 * How the ferry wire authenticates and encrypts: TLS with a pre-shared key,
 * TLS with certificates verified both ways, or — only when asked for
 * explicitly — plain TCP.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

export type WireAuth =
  | { kind: 'psk'; key: Buffer; source: string; openFile: boolean }
  | { kind: 'cert'; cert: Buffer; key: Buffer; ca: Buffer; peerName?: string }
  | { kind: 'insecure' };

export interface AuthFlags {
  pskFile?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
  /** Accept a key file that group or others can read (warned). */
  allowOpenPsk?: boolean;
  /** Destination: the name the source's certificate must carry (default: the host in the URL). */
  peerName?: string;
}

const PSK_IDENTITY = 'ferry';
/**
 * TLS 1.3 only. OpenSSL's PSK callbacks need a SHA-256 suite under TLS 1.3;
 * and OpenSSL offers and accepts only psk_dhe_ke (PSK with ECDHE, so forward
 * secret) unless SSL_OP_ALLOW_NO_DHE_KEX is set, which ferry never sets.
 */
const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
const TLS_VERSIONS = { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' } as const;
const MIN_PSK_BYTES = 32;
/** extendedKeyUsage: a source's certificate carries serverAuth; a destination's clientAuth and not serverAuth. */
const EKU_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

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
  if (flags.pskFile) {
    const { key, openFile } = readPsk(flags.pskFile, flags.allowOpenPsk ?? false);
    return { kind: 'psk', key, source: flags.pskFile, openFile };
  }
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
    peerName: flags.peerName,
  };
}

/** What an operator should hear about the chosen authentication before serving. */
export function authWarnings(auth: WireAuth): string[] {
  if (auth.kind === 'insecure')
    return ['ferry wire without TLS (--insecure): anyone on the path can read the disk or pose as either end'];
  if (auth.kind === 'psk' && auth.openFile)
    return [
      `pre-shared key ${auth.source} can be read by group or others (accepted by --allow-open-psk): anyone who reads it can pose as either end`,
    ];
  return [];
}

/**
 * A key file holds 32 or more random bytes as hex (as `ferry keygen` writes
 * it), readable by its owner only unless `allowOpen`.
 */
export function readPsk(file: string, allowOpen = false): { key: Buffer; openFile: boolean } {
  let text: string;
  let mode: number;
  try {
    mode = fs.statSync(file).mode & 0o777;
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new Error(`cannot read pre-shared key ${file}: ${(e as Error).message}`, { cause: e });
  }
  const openFile = (mode & 0o077) !== 0;
  if (openFile && !allowOpen) {
    throw new Error(
      `pre-shared key ${file} can be read by group or others (mode ${mode.toString(8).padStart(4, '0')}): ` +
        `chmod 600 ${file}, or pass --allow-open-psk to accept it anyway`,
    );
  }
  if (!new RegExp(`^([0-9a-fA-F]{2}){${MIN_PSK_BYTES},}$`).test(text)) {
    throw new Error(
      `pre-shared key ${file} must hold at least ${MIN_PSK_BYTES * 2} hex digits (${MIN_PSK_BYTES} bytes), as \`ferry keygen --psk FILE\` writes`,
    );
  }
  const key = Buffer.from(text, 'hex');
  if (key.every((b) => b === key[0])) {
    throw new Error(
      `pre-shared key ${file} is one byte value (0x${key[0].toString(16).padStart(2, '0')}) repeated: that is not a secret; make a key with \`ferry keygen --psk FILE\``,
    );
  }
  return { key, openFile };
}

/** The TLS options of a source (server side). */
export function serverTlsOptions(auth: Exclude<WireAuth, { kind: 'insecure' }>): tls.TlsOptions {
  return auth.kind === 'psk'
    ? {
        pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? auth.key : null),
        ciphers: PSK_CIPHERS,
        ...TLS_VERSIONS,
      }
    : // The chain is judged in destinationProblem, before any byte is read: the destination then hears why in a REFUSE.
      { cert: auth.cert, key: auth.key, ca: auth.ca, requestCert: true, rejectUnauthorized: false, ...TLS_VERSIONS };
}

/** The TLS options of a destination (client side) connecting to `host`. */
export function clientTlsOptions(auth: Exclude<WireAuth, { kind: 'insecure' }>, host: string): tls.ConnectionOptions {
  if (auth.kind === 'psk') {
    return {
      pskCallback: () => ({ psk: auth.key, identity: PSK_IDENTITY }),
      ciphers: PSK_CIPHERS,
      ...TLS_VERSIONS,
      checkServerIdentity: () => undefined, // the key is the identity
    };
  }
  const expected = auth.peerName ?? host;
  return {
    cert: auth.cert,
    key: auth.key,
    ca: auth.ca,
    ...TLS_VERSIONS,
    checkServerIdentity: (_host, cert) => {
      if (tls.checkServerIdentity(expected, cert))
        return new Error(
          `the source's certificate names ${certificateNames(cert)}, not ${expected}: it is not the source this destination was given (--peer-name, wire.peer_name)`,
        );
      const eku = cert.ext_key_usage ?? [];
      if (!eku.includes(EKU_SERVER_AUTH))
        return new Error(
          `the source's certificate (${certificateNames(cert)}) is not a source's: its extendedKeyUsage lacks serverAuth`,
        );
      return undefined;
    },
  };
}

/** Why a peer may not act as a destination (certificates only), or null when it may. */
export function destinationProblem(auth: WireAuth, socket: net.Socket): string | null {
  if (auth.kind !== 'cert' || !(socket instanceof tls.TLSSocket)) return null;
  const cert = socket.getPeerCertificate();
  if (!cert || !cert.raw) return 'the destination presented no certificate (it needs --cert, --key and --ca)';
  const eku = cert.ext_key_usage ?? [];
  if (!eku.includes(EKU_CLIENT_AUTH) || eku.includes(EKU_SERVER_AUTH)) {
    return (
      `certificate ${certificateNames(cert)} is not a destination's: a destination's certificate has ` +
      `extendedKeyUsage clientAuth and not serverAuth (it has ${eku.length ? eku.map(ekuName).join(', ') : 'none'})`
    );
  }
  if (!socket.authorized) {
    const why = String(socket.authorizationError ?? 'unverified');
    return `certificate ${certificateNames(cert)} is not signed by the CA this source trusts, or is not valid (${why})`;
  }
  return null;
}

function ekuName(oid: string): string {
  return oid === EKU_SERVER_AUTH ? 'serverAuth' : oid === EKU_CLIENT_AUTH ? 'clientAuth' : oid;
}

function certificateNames(cert: tls.PeerCertificate): string {
  const alt = (cert.subjectaltname ?? '').split(', ').map((n) => n.replace(/^(DNS|IP Address):/, ''));
  const names = [cert.subject?.CN, ...alt].filter(Boolean);
  return names.length ? `"${[...new Set(names)].join('", "')}"` : '(no name)';
}

export interface WireServerOptions {
  /** A peer must finish TLS within this time (the source also bounds TLS + HELLO together). */
  handshakeTimeoutMs: number;
}

export function createWireServer(
  auth: WireAuth,
  options: WireServerOptions,
  onConnection: (socket: net.Socket) => void,
  onAuthFailure: (reason: string, peer: string, detail: string) => void,
): net.Server {
  if (auth.kind === 'insecure') return net.createServer(onConnection);
  const server = tls.createServer(
    { ...serverTlsOptions(auth), handshakeTimeout: options.handshakeTimeoutMs },
    onConnection,
  );
  server.on('tlsClientError', (err, socket) => {
    // Node leaves the socket open once someone listens for this event: an idle peer would stay forever.
    socket.destroy();
    const detail = oneLine(err.message);
    onAuthFailure(
      explainPeerFailure(auth, detail),
      `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`,
      detail,
    );
  });
  return server;
}

/** Connects (and, with TLS, completes the handshake); failures are explained in words. */
export function connectWire(auth: WireAuth, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const where = `${host}:${port}`;
    const socket =
      auth.kind === 'insecure' ? net.connect(port, host) : tls.connect({ host, port, ...clientTlsOptions(auth, host) });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`cannot connect to ferry source at ${where}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(auth.kind === 'insecure' ? 'connect' : 'secureConnect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(
        new Error(`cannot connect to ferry source at ${where}: ${explainHandshakeFailure(auth, err, false)}`, {
          cause: err,
        }),
      );
    });
  });
}

const NOT_TLS = /wrong version number|packet length too long|unknown protocol|record layer failure|http request/i;

/** A destination's failure to reach a source, in words; the library's text follows in brackets. */
export function explainHandshakeFailure(auth: WireAuth, err: Error, connected: boolean): string {
  const detail = oneLine(err.message);
  const own = (text: string): string => `${text} [${detail}]`;
  if (/ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|timed out/.test(detail)) return detail;
  if (auth.kind === 'insecure') {
    if (/bad preamble|ECONNRESET|EPIPE|closed/i.test(detail))
      return own(
        'the source did not answer in plain TCP: it probably requires TLS (--psk-file or --cert/--key/--ca) while this destination runs --insecure (or it is at its connection limit)',
      );
    return detail;
  }
  if (NOT_TLS.test(detail))
    return own(
      `the source does not speak TLS: it seems to run with --insecure while this destination uses ${auth.kind === 'psk' ? 'a pre-shared key' : 'certificates'}; give both ends the same authentication`,
    );
  if (auth.kind === 'psk') {
    if (/certificate/i.test(detail))
      return own(
        'the source uses certificates (--cert/--key/--ca), not a pre-shared key; give both ends the same authentication',
      );
    if (/alert|handshake|decrypt|bad record mac|ECONNRESET|EPIPE|closed/i.test(detail))
      return own(
        `TLS handshake failed: the source refused the pre-shared key ${auth.source} (both ends need the same key file)`,
      );
    return detail;
  }
  if (/not the source this destination was given|is not a source's/.test(detail)) return detail;
  if (
    /self[- ]signed|issuer certificate|unable to verify|certificate signature failure|certificate has expired|not yet valid/i.test(
      detail,
    )
  )
    return own("the source's certificate is not signed by the CA given with --ca (or has expired)");
  if (/unknown ca|bad certificate|certificate required|unsupported certificate|certificate unknown|alert/i.test(detail))
    return own(
      "the source refused this destination's certificate: it is not signed by the CA the source trusts, or is not a destination's certificate (the source logs why)",
    );
  if (connected)
    return own(
      "the source closed the connection right after the TLS handshake: it may have refused this destination's certificate (the source logs why)",
    );
  if (/ECONNRESET|EPIPE|closed/i.test(detail))
    return own(
      'the source closed the connection during the TLS handshake: it may use a pre-shared key, not certificates',
    );
  return detail;
}

/** Why a source's TLS handshake with a peer failed, in words (for its log). */
export function explainPeerFailure(auth: WireAuth, detail: string): string {
  if (/timeout/i.test(detail)) return 'the peer did not finish the TLS handshake in time';
  if (NOT_TLS.test(detail)) return 'the peer does not speak TLS (a destination running --insecure?)';
  if (auth.kind === 'psk') {
    if (/no suitable signature|no shared cipher|bad binder|decrypt|psk/i.test(detail))
      return 'the peer has a different pre-shared key (or uses certificates)';
    return 'TLS handshake failed';
  }
  if (/did not return a certificate|certificate required/i.test(detail))
    return 'the peer presented no certificate (a destination needs --cert/--key/--ca)';
  if (/unknown ca|certificate verify failed|issuer|self[- ]signed|unsupported certificate purpose/i.test(detail))
    return "the peer's certificate is not signed by this source's CA (--ca), or is not a destination's";
  return 'TLS handshake failed';
}

function oneLine(text: string): string {
  return text.trim().replace(/\s+/g, ' ');
}
