/**
 * Every configuration key, its default and its meaning. The TOML file and
 * the command line both land here; an unknown key or a bad value is an error
 * that names the key.
 */
import * as v from 'valibot';
import { batchBlocksLimit, blockSizeProblem, isPowerOfTwo, MAX_BATCH_BLOCKS, MAX_BATCH_BYTES } from '../util/limits';
import { pathTo } from '../util/schema-issues';

const portInRange = (s: string): boolean => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535;

export const hostPort = v.pipe(
  v.string(),
  v.regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'must be HOST:PORT'),
  v.check(portInRange, 'port must be at most 65535'),
);

/** A checked HOST:PORT (an IPv6 host in brackets) as host and port. */
export function parseHostPort(value: string): { host: string; port: number } {
  const at = value.lastIndexOf(':');
  let host = value.slice(0, at);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(value.slice(at + 1)) };
}

/** An integer that is exact in a double (the safe range). */
export const integer = v.pipe(v.number(), v.safeInteger());
const positiveInt = v.pipe(integer, v.gtValue(0));
const nonEmpty = v.pipe(v.string(), v.minLength(1));
/** Measured in docs/benchmarks.md ("Worker threads at nice 10"). */
const WORKERS_NICE_DEFAULT = 10;
/** A worker thread's niceness (Linux `nice`: 0 as the main thread, 19 the lowest share of a busy core). */
const workersNice = v.optional(v.pipe(integer, v.minValue(0), v.maxValue(19)), WORKERS_NICE_DEFAULT);
/** A string of 1 to `max` characters. */
export const boundedText = (max: number) => v.pipe(v.string(), v.minLength(1), v.maxLength(max));
const description = v.optional(v.pipe(v.string(), v.maxLength(4096)), '');

export const LogLevel = v.picklist(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export const ServeSection = v.strictObject({
  /** Raw image file to serve. */
  image: v.optional(nonEmpty),
  /** Export name; defaults to the image's base name. */
  export: v.optional(boundedText(4096)),
  /** Export description sent with NBD_INFO_DESCRIPTION. */
  description,
  /** TCP address to listen on. */
  listen: v.optional(hostPort, '127.0.0.1:10809'),
  /** Unix socket path to listen on instead of TCP. */
  socket: v.optional(nonEmpty),
  /** Refuse writes, trims and zeroes with EPERM. */
  read_only: v.optional(v.boolean(), false),
});

export const NbdSection = v.strictObject({
  /** Requests one connection may have in flight before the server stops reading from it. */
  max_in_flight_requests: v.optional(v.pipe(positiveInt, v.maxValue(4096)), 64),
  /** Bytes one connection may hold: READ/WRITE payloads in progress plus replies the client has not read yet. */
  max_in_flight_bytes: v.optional(v.pipe(positiveInt, v.minValue(1 << 20)), 64 << 20),
  /** Largest READ or WRITE a client may send (also advertised as the maximum block size). */
  max_request_bytes: v.optional(v.pipe(positiveInt, v.minValue(4096), v.maxValue(1 << 30)), 32 << 20),
  /** A client must finish the handshake within this time. */
  handshake_timeout_ms: v.optional(positiveInt, 30_000),
  /** NBD connections at once (per listener); more are closed as they arrive. */
  max_connections: v.optional(v.pipe(positiveInt, v.maxValue(65_536)), 128),
  /** Close a connection with nothing in flight that sends nothing for this long; 0: never (a VM's disk may be idle for days). */
  idle_timeout_ms: v.optional(v.pipe(integer, v.minValue(0)), 0),
});

const powerOfTwo = (min: number, max: number) =>
  v.pipe(
    integer,
    v.check((n) => n >= min && n <= max && isPowerOfTwo(n), `must be a power of two between ${min} and ${max}`),
  );

export const blockSize = v.pipe(
  v.number(),
  v.check(
    (n) => blockSizeProblem(n) === undefined,
    (issue) => blockSizeProblem(issue.input as number) ?? '',
  ),
);

/** HOST:PORT, or a bare PORT on 127.0.0.1. */
export const metricsAddress = v.pipe(
  v.string(),
  v.regex(/^((\[[0-9a-fA-F:]+\]|[^:\s]+):)?\d{1,5}$/, 'must be HOST:PORT or PORT'),
  v.transform((value) => (/^\d+$/.test(value) ? `127.0.0.1:${value}` : value)),
  v.check(portInRange, 'port must be at most 65535'),
);

/** The control socket serves operators and scrapers, not crowds. */
export const controlLimits = {
  /** Control connections at once; more are closed as they arrive. */
  control_max_connections: v.optional(v.pipe(positiveInt, v.maxValue(4096)), 32),
  /** A control connection that sends nothing for this long is closed, so forgotten clients do not pile up. */
  control_idle_timeout_ms: v.optional(v.pipe(positiveInt, v.maxValue(86_400_000)), 300_000),
};

/** An octal file mode that does not let others write. */
export const fileMode = v.optional(
  v.pipe(
    v.string(),
    v.regex(/^0?[0-7]{3}$/, 'must be an octal mode such as "0600"'),
    v.check((m) => (parseInt(m, 8) & 0o002) === 0, 'must not let others write the image'),
  ),
  '0600',
);

export const DestSection = v.strictObject({
  /** Where missing blocks come from: ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH. */
  source: v.optional(nonEmpty),
  /** Local image; created sparse at the source's size. */
  image: v.optional(nonEmpty),
  /** Block map file; default: the image path + ".ferry-state", or in state_dir when the image is a block device. */
  state: v.optional(nonEmpty),
  /** Where the state of a block-device image goes; default /var/lib/ferry (root) or ~/.local/state/ferry. */
  state_dir: v.optional(nonEmpty),
  /** Export name for the VM; defaults to the image's base name. */
  export: v.optional(boundedText(4096)),
  description,
  listen: v.optional(hostPort, '127.0.0.1:10809'),
  socket: v.optional(nonEmpty),
  /** Control socket for `ferry ctl`; default: beside the state file, STATE without ".ferry-state" + ".ferry-ctl". */
  control: v.optional(nonEmpty),
  /** Group (name or id) that may use the control socket too (mode 0660); default: owner only (0600). */
  control_group: v.optional(boundedText(255)),
  /** HOST:PORT (or a bare PORT, on 127.0.0.1) to serve Prometheus metrics on (GET /metrics). */
  metrics: v.optional(metricsAddress),
  /** Mode of the image and state files a new migration creates (octal string, e.g. "0640"). */
  file_mode: fileMode,
  /** Unit of copy and state; a new migration only (a resumed one keeps its own). */
  block_size: v.optional(blockSize, 4096),
  /** How long a VM read waits for a missing block while the source is unreachable, before EIO. */
  fetch_timeout_ms: v.optional(positiveInt, 60_000),
  /** How often copy progress is made durable. */
  persist_interval_ms: v.optional(v.pipe(positiveInt, v.minValue(50)), 1000),
  /**
   * When this side becomes the authority: "manual" (ferry ctl cutover here or
   * at the source, or the first write of this side's VM) or "at-start" (the
   * source is no longer written: a stopped VM, a snapshot).
   */
  cutover: v.optional(v.picklist(['manual', 'at-start']), 'manual'),
  /** Reconnect backoff: first delay, doubling up to the maximum. */
  reconnect_min_ms: v.optional(positiveInt, 100),
  reconnect_max_ms: v.optional(positiveInt, 5000),
  /** A ferry source that sends no frame for this long while requests wait is dropped and reconnected. */
  wire_stall_timeout_ms: v.optional(v.pipe(positiveInt, v.maxValue(3_600_000)), 20_000),
  /** The same for a plain NBD source (no byte for this long while requests wait). */
  nbd_stall_timeout_ms: v.optional(v.pipe(positiveInt, v.maxValue(3_600_000)), 30_000),
  ...controlLimits,
  /** Plain NBD source only: the QEMU dirty bitmap (qemu:dirty-bitmap:NAME) that records the source's writes. */
  dirty_bitmap: v.optional(boundedText(1023)),
  /**
   * A seed image here (a template or an older copy of the disk): blocks whose SHA-256 equals the
   * source's are copied from it instead of fetched. Needs a ferry source (ferry://).
   */
  seed: v.optional(nonEmpty),
});

export const CopySection = v.strictObject({
  /** Blocks per background fetch request. */
  batch_blocks: v.optional(powerOfTwo(1, MAX_BATCH_BLOCKS), 64),
  /** Background bytes in flight at most: about one bandwidth-delay product of the link. */
  window_bytes: v.optional(v.pipe(positiveInt, v.minValue(4096)), 16 << 20),
  /** Batches in flight above the measured bandwidth-delay product: fills the link vs. queues on-demand fetches. */
  queue_batches: v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(16)), 1),
  /** Background copy cap in bytes per second; 0 means none. */
  rate_limit: v.optional(v.pipe(integer, v.minValue(0)), 0),
  /** Pause of the background copy after the local disk refused a write. */
  store_error_backoff_ms: v.optional(positiveInt, 5000),
  /** Ask the source where it reads as zeros (its holes) and hold those blocks without fetching them. */
  skip_zero_ranges: v.optional(v.boolean(), true),
});

export const codecName = v.picklist(['auto', 'none', 'lz4', 'lz4-wasm', 'deflate']);

/** Authentication of the ferry wire; exactly one of psk_file, cert+key+ca, insecure. */
export const wireAuth = {
  /** Pre-shared key file (64 hex digits; `ferry keygen --psk FILE`). */
  psk_file: v.optional(nonEmpty),
  /** PEM certificate, key and CA for mutual TLS. */
  cert: v.optional(nonEmpty),
  key: v.optional(nonEmpty),
  ca: v.optional(nonEmpty),
  /** Plain TCP: anyone on the path can read the disk. Must be chosen explicitly. */
  insecure: v.optional(v.boolean(), false),
  /** Accept a pre-shared key file that group or others can read (warned at start). */
  allow_open_psk: v.optional(v.boolean(), false),
};

export const SourceSection = v.strictObject({
  /** Raw image (file or block device) served to destinations. */
  image: v.optional(nonEmpty),
  /** Where the image's identity and the cutover record are kept; default /var/lib/ferry (root), else $XDG_STATE_HOME/ferry or ~/.local/state/ferry. */
  state_dir: v.optional(nonEmpty),
  /** Export name; defaults to the image's base name. */
  export: v.optional(boundedText(4096)),
  /** ferry wire listen address. */
  listen: v.optional(hostPort, '127.0.0.1:10810'),
  /** Also serve the image over NBD to the local VM on this address. */
  nbd_listen: v.optional(hostPort),
  /** Codec for batches: a name, or auto (the best effective rate for the measured link). */
  codec: v.optional(codecName, 'auto'),
  /** zlib level for the deflate codec. */
  deflate_level: v.optional(v.pipe(integer, v.minValue(0), v.maxValue(9)), 6),
  /** Worker threads encoding batches; 0 means one per core. */
  workers: v.optional(v.pipe(integer, v.minValue(0), v.maxValue(64)), 0),
  /** Niceness of those threads: above 0 they yield the cores to the VM's I/O and the urgent blocks. */
  workers_nice: workersNice,
  /** Control socket for `ferry ctl` (status, cutover, unfence). */
  control: v.optional(nonEmpty),
  /** Group (name or id) that may use the control socket too (mode 0660); default: owner only (0600). */
  control_group: v.optional(boundedText(255)),
  ...controlLimits,
  /** A destination must finish TLS and say HELLO within this time, or it is disconnected. */
  handshake_timeout_ms: v.optional(v.pipe(positiveInt, v.maxValue(600_000)), 10_000),
  /** Wire connections at once (each destination opens 1 + wire.background_streams); more are refused. */
  max_connections: v.optional(v.pipe(positiveInt, v.maxValue(65_536)), 64),
  ...wireAuth,
});

export const WireSection = v.strictObject({
  /** Parallel background connections to a ferry source (to fill a high bandwidth-delay link). */
  background_streams: v.optional(v.pipe(integer, v.minValue(1), v.maxValue(16)), 2),
  /** Worker threads decoding and verifying batches; 0 means one per core. */
  workers: v.optional(v.pipe(integer, v.minValue(0), v.maxValue(64)), 0),
  /** Niceness of those threads: above 0 they yield the cores to the VM's I/O and the urgent blocks. */
  workers_nice: workersNice,
  /** Attempts per block whose data keeps failing verification before the fetch fails. */
  max_attempts: v.optional(v.pipe(positiveInt, v.maxValue(100)), 8),
  /** Certificates: the name (CN or subjectAltName) the source's certificate must carry; default: the host in dest.source. */
  peer_name: v.optional(boundedText(255)),
  ...wireAuth,
});

export const LogSection = v.strictObject({
  level: v.optional(LogLevel, 'info'),
  /** Append JSON log lines to this file instead of writing them to stderr. */
  file: v.optional(nonEmpty),
});

// A section left out is the section with every default ({} runs through its schema).
export const ConfigSchema = v.pipe(
  v.strictObject({
    serve: v.optional(ServeSection, {}),
    nbd: v.optional(NbdSection, {}),
    dest: v.optional(DestSection, {}),
    copy: v.optional(CopySection, {}),
    source: v.optional(SourceSection, {}),
    wire: v.optional(WireSection, {}),
    log: v.optional(LogSection, {}),
  }),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const config = dataset.value;
    // One batch is one BATCH frame on the wire: its payload has a size limit.
    const limit = batchBlocksLimit(config.dest.block_size);
    if (config.copy.batch_blocks > limit) {
      addIssue({
        path: pathTo(config, ['copy', 'batch_blocks']),
        message: `must be at most ${limit} with dest.block_size ${config.dest.block_size} (a batch holds at most ${MAX_BATCH_BYTES} bytes)`,
      });
    }
  }),
);

export type FerryConfig = v.InferOutput<typeof ConfigSchema>;
