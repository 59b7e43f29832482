/**
 * Every configuration key, its default and its meaning. The TOML file and
 * the command line both land here; an unknown key or a bad value is an error
 * that names the key.
 */
import { z } from 'zod';
import { batchBlocksLimit, blockSizeProblem, isPowerOfTwo, MAX_BATCH_BLOCKS, MAX_BATCH_BYTES } from '../util/limits';

export const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'must be HOST:PORT')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

/** A checked HOST:PORT (an IPv6 host in brackets) as host and port. */
export function parseHostPort(value: string): { host: string; port: number } {
  const at = value.lastIndexOf(':');
  let host = value.slice(0, at);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(value.slice(at + 1)) };
}

const positiveInt = z.number().int().positive();

export const LogLevel = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export const ServeSection = z
  .object({
    /** Raw image file to serve. */
    image: z.string().min(1).optional(),
    /** Export name; defaults to the image's base name. */
    export: z.string().min(1).max(4096).optional(),
    /** Export description sent with NBD_INFO_DESCRIPTION. */
    description: z.string().max(4096).default(''),
    /** TCP address to listen on. */
    listen: hostPort.default('127.0.0.1:10809'),
    /** Unix socket path to listen on instead of TCP. */
    socket: z.string().min(1).optional(),
    /** Refuse writes, trims and zeroes with EPERM. */
    read_only: z.boolean().default(false),
  })
  .strict();

export const NbdSection = z
  .object({
    /** Requests one connection may have in flight before the server stops reading from it. */
    max_in_flight_requests: positiveInt.max(4096).default(64),
    /** Bytes one connection may hold: READ/WRITE payloads in progress plus replies the client has not read yet. */
    max_in_flight_bytes: positiveInt.min(1 << 20).default(64 << 20),
    /** Largest READ or WRITE a client may send (also advertised as the maximum block size). */
    max_request_bytes: positiveInt
      .min(4096)
      .max(1 << 30)
      .default(32 << 20),
    /** A client must finish the handshake within this time. */
    handshake_timeout_ms: positiveInt.default(30_000),
    /** NBD connections at once (per listener); more are closed as they arrive. */
    max_connections: positiveInt.max(65_536).default(128),
    /** Close a connection with nothing in flight that sends nothing for this long; 0: never (a VM's disk may be idle for days). */
    idle_timeout_ms: z.number().int().min(0).default(0),
  })
  .strict();

const powerOfTwo = (min: number, max: number) =>
  z
    .number()
    .int()
    .refine((n) => n >= min && n <= max && isPowerOfTwo(n), `must be a power of two between ${min} and ${max}`);

export const blockSize = z.number().superRefine((n, ctx) => {
  const problem = blockSizeProblem(n);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/** HOST:PORT, or a bare PORT on 127.0.0.1. */
export const metricsAddress = z
  .union([hostPort, z.string().regex(/^\d{1,5}$/, 'must be HOST:PORT or PORT')])
  .transform((v) => (/^\d+$/.test(v) ? `127.0.0.1:${v}` : v))
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

/** The control socket serves operators and scrapers, not crowds. */
export const controlLimits = {
  /** Control connections at once; more are closed as they arrive. */
  control_max_connections: positiveInt.max(4096).default(32),
  /** A control connection that sends nothing for this long is closed, so forgotten clients do not pile up. */
  control_idle_timeout_ms: positiveInt.max(86_400_000).default(300_000),
};

export const DestSection = z
  .object({
    /** Where missing blocks come from: ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH. */
    source: z.string().min(1).optional(),
    /** Local image; created sparse at the source's size. */
    image: z.string().min(1).optional(),
    /** Block map file; default: the image path + ".ferry-state", or in state_dir when the image is a block device. */
    state: z.string().min(1).optional(),
    /** Where the state of a block-device image goes; default /var/lib/ferry (root) or ~/.local/state/ferry. */
    state_dir: z.string().min(1).optional(),
    /** Export name for the VM; defaults to the image's base name. */
    export: z.string().min(1).max(4096).optional(),
    description: z.string().max(4096).default(''),
    listen: hostPort.default('127.0.0.1:10809'),
    socket: z.string().min(1).optional(),
    /** Control socket for `ferry ctl`; default: beside the state file, STATE without ".ferry-state" + ".ferry-ctl". */
    control: z.string().min(1).optional(),
    /** Group (name or id) that may use the control socket too (mode 0660); default: owner only (0600). */
    control_group: z.string().min(1).max(255).optional(),
    /** HOST:PORT (or a bare PORT, on 127.0.0.1) to serve Prometheus metrics on (GET /metrics). */
    metrics: metricsAddress.optional(),
    /** Mode of the image and state files a new migration creates (octal string, e.g. "0640"). */
    file_mode: z
      .string()
      .regex(/^0?[0-7]{3}$/, 'must be an octal mode such as "0600"')
      .refine((m) => (parseInt(m, 8) & 0o002) === 0, 'must not let others write the image')
      .default('0600'),
    /** Unit of copy and state; a new migration only (a resumed one keeps its own). */
    block_size: blockSize.default(4096),
    /** How long a VM read waits for a missing block while the source is unreachable, before EIO. */
    fetch_timeout_ms: positiveInt.default(60_000),
    /** How often copy progress is made durable. */
    persist_interval_ms: positiveInt.min(50).default(1000),
    /**
     * When this side becomes the authority: "manual" (ferry ctl cutover here or
     * at the source, or the first write of this side's VM) or "at-start" (the
     * source is no longer written: a stopped VM, a snapshot).
     */
    cutover: z.enum(['manual', 'at-start']).default('manual'),
    /** Reconnect backoff: first delay, doubling up to the maximum. */
    reconnect_min_ms: positiveInt.default(100),
    reconnect_max_ms: positiveInt.default(5000),
    /** A ferry source that sends no frame for this long while requests wait is dropped and reconnected. */
    wire_stall_timeout_ms: positiveInt.max(3_600_000).default(20_000),
    /** The same for a plain NBD source (no byte for this long while requests wait). */
    nbd_stall_timeout_ms: positiveInt.max(3_600_000).default(30_000),
    ...controlLimits,
    /** Plain NBD source only: the QEMU dirty bitmap (qemu:dirty-bitmap:NAME) that records the source's writes. */
    dirty_bitmap: z.string().min(1).max(1023).optional(),
    /**
     * A seed image here (a template or an older copy of the disk): blocks whose SHA-256 equals the
     * source's are copied from it instead of fetched. Needs a ferry source (ferry://).
     */
    seed: z.string().min(1).optional(),
  })
  .strict();

export const CopySection = z
  .object({
    /** Blocks per background fetch request. */
    batch_blocks: powerOfTwo(1, MAX_BATCH_BLOCKS).default(64),
    /** Background bytes in flight at most: about one bandwidth-delay product of the link. */
    window_bytes: positiveInt.min(4096).default(16 << 20),
    /** Batches in flight above the measured bandwidth-delay product: fills the link vs. queues on-demand fetches. */
    queue_batches: z.number().min(0).max(16).default(1),
    /** Background copy cap in bytes per second; 0 means none. */
    rate_limit: z.number().int().min(0).default(0),
    /** Pause of the background copy after the local disk refused a write. */
    store_error_backoff_ms: positiveInt.default(5000),
    /** Ask the source where it reads as zeros (its holes) and hold those blocks without fetching them. */
    skip_zero_ranges: z.boolean().default(true),
  })
  .strict();

export const codecName = z.enum(['auto', 'none', 'lz4', 'lz4-wasm', 'deflate']);

/** Authentication of the ferry wire; exactly one of psk_file, cert+key+ca, insecure. */
export const wireAuth = {
  /** Pre-shared key file (64 hex digits; `ferry keygen --psk FILE`). */
  psk_file: z.string().min(1).optional(),
  /** PEM certificate, key and CA for mutual TLS. */
  cert: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
  ca: z.string().min(1).optional(),
  /** Plain TCP: anyone on the path can read the disk. Must be chosen explicitly. */
  insecure: z.boolean().default(false),
  /** Accept a pre-shared key file that group or others can read (warned at start). */
  allow_open_psk: z.boolean().default(false),
};

export const SourceSection = z
  .object({
    /** Raw image (file or block device) served to destinations. */
    image: z.string().min(1).optional(),
    /** Where the image's identity and the cutover record are kept; default /var/lib/ferry (root), else $XDG_STATE_HOME/ferry or ~/.local/state/ferry. */
    state_dir: z.string().min(1).optional(),
    /** Export name; defaults to the image's base name. */
    export: z.string().min(1).max(4096).optional(),
    /** ferry wire listen address. */
    listen: hostPort.default('127.0.0.1:10810'),
    /** Also serve the image over NBD to the local VM on this address. */
    nbd_listen: hostPort.optional(),
    /** Codec for batches: a name, or auto (the best effective rate for the measured link). */
    codec: codecName.default('auto'),
    /** zlib level for the deflate codec. */
    deflate_level: z.number().int().min(0).max(9).default(6),
    /** Worker threads encoding batches; 0 means one per core. */
    workers: z.number().int().min(0).max(64).default(0),
    /** Control socket for `ferry ctl` (status, cutover, unfence). */
    control: z.string().min(1).optional(),
    /** Group (name or id) that may use the control socket too (mode 0660); default: owner only (0600). */
    control_group: z.string().min(1).max(255).optional(),
    ...controlLimits,
    /** A destination must finish TLS and say HELLO within this time, or it is disconnected. */
    handshake_timeout_ms: positiveInt.max(600_000).default(10_000),
    /** Wire connections at once (each destination opens 1 + wire.background_streams); more are refused. */
    max_connections: positiveInt.max(65_536).default(64),
    ...wireAuth,
  })
  .strict();

export const WireSection = z
  .object({
    /** Parallel background connections to a ferry source (to fill a high bandwidth-delay link). */
    background_streams: z.number().int().min(1).max(16).default(2),
    /** Worker threads decoding and verifying batches; 0 means one per core. */
    workers: z.number().int().min(0).max(64).default(0),
    /** Attempts per block whose data keeps failing verification before the fetch fails. */
    max_attempts: positiveInt.max(100).default(8),
    /** Certificates: the name (CN or subjectAltName) the source's certificate must carry; default: the host in dest.source. */
    peer_name: z.string().min(1).max(255).optional(),
    ...wireAuth,
  })
  .strict();

export const LogSection = z
  .object({
    level: LogLevel.default('info'),
    /** Append JSON log lines to this file instead of writing them to stderr. */
    file: z.string().min(1).optional(),
  })
  .strict();

export const ConfigSchema = z
  .object({
    serve: ServeSection.default(ServeSection.parse({})),
    nbd: NbdSection.default(NbdSection.parse({})),
    dest: DestSection.default(DestSection.parse({})),
    copy: CopySection.default(CopySection.parse({})),
    source: SourceSection.default(SourceSection.parse({})),
    wire: WireSection.default(WireSection.parse({})),
    log: LogSection.default(LogSection.parse({})),
  })
  .strict()
  .superRefine((config, ctx) => {
    // One batch is one BATCH frame on the wire: its payload has a size limit.
    const limit = batchBlocksLimit(config.dest.block_size);
    if (config.copy.batch_blocks > limit) {
      ctx.addIssue({
        code: 'custom',
        path: ['copy', 'batch_blocks'],
        message: `must be at most ${limit} with dest.block_size ${config.dest.block_size} (a batch holds at most ${MAX_BATCH_BYTES} bytes)`,
      });
    }
  });

export type FerryConfig = z.infer<typeof ConfigSchema>;
