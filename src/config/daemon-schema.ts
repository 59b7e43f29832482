/**
 * ferryd.toml: the keys of `ferry daemon`, one process per host that is the
 * destination of many migrations and the source of others. [nbd], [copy],
 * [wire] and [log] mean what they mean for `ferry dest`; [daemon] holds the
 * host's listeners, its shared budget and the defaults of every disk; each
 * [[migration]] declares one VM (created, and started if asked, when the
 * daemon starts or reloads). [source] is the ferry-wire listener for the
 * images this host sources, with the keys `ferry source` takes, and each
 * [[source.export]] one image served under a name.
 */
import path from 'node:path';
import * as v from 'valibot';
import { batchBlocksLimit, MAX_BATCH_BYTES } from '../util/limits';
import { pathTo } from '../util/schema-issues';
import {
  blockSize,
  boundedText,
  controlLimits,
  CopySection,
  fileMode,
  hostPort,
  integer,
  LogSection,
  metricsAddress,
  NbdSection,
  SourceSection,
  WireSection,
} from './schema';

const positiveInt = v.pipe(integer, v.gtValue(0));
const byteRate = v.pipe(integer, v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER));
const nonEmpty = v.pipe(v.string(), v.minLength(1));

/** Migration and disk names appear in export names, file names, metric labels and log lines. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const name = v.pipe(
  v.string(),
  v.regex(NAME_PATTERN, 'must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit'),
);

export const DiskSpec = v.strictObject({
  /** The disk's name within its migration (vda, disk0...). */
  name,
  /** ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH. */
  source: boundedText(4096),
  /** Local image (file, created sparse at the source's size; or a block device). */
  image: boundedText(4096),
  /** NBD export name the VM opens; default MIGRATION/DISK. */
  export: v.optional(boundedText(4096)),
  /** Unit of copy and state; default daemon.block_size. */
  block_size: v.optional(blockSize),
  /** Plain NBD source only: the QEMU dirty bitmap that records the source's writes. */
  dirty_bitmap: v.optional(boundedText(1023)),
});
export type DiskSpec = v.InferOutput<typeof DiskSpec>;

/** The NBD export name a disk is served under: its own, or MIGRATION/DISK. */
export function diskExportName(migration: string, disk: DiskSpec): string {
  return disk.export ?? `${migration}/${disk.name}`;
}

/** Source export names go into HELLO, NBD negotiation, metric labels and log lines. */
export const EXPORT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

export const SourceExportSpec = v.strictObject({
  /** The name destinations give (ferry://HOST:PORT/NAME), and the source VM's NBD export name when tracked. */
  name: v.pipe(
    v.string(),
    v.regex(
      EXPORT_NAME_PATTERN,
      'must be 1-128 letters, digits, ".", "_", ":", "/" or "-", starting with a letter or digit',
    ),
  ),
  /** Raw image (file or block device) served to destinations. */
  image: boundedText(4096),
  /**
   * "read-only": nothing on this host writes the image (a stopped VM, a snapshot); locked shared.
   * "tracked": the source VM runs here and writes through the daemon's NBD listener under this
   * name; every write is reported to the destinations and fenced at cutover; locked exclusively.
   */
  writes: v.optional(v.picklist(['read-only', 'tracked']), 'read-only'),
});
export type SourceExportSpec = v.InferOutput<typeof SourceExportSpec>;

export const DaemonSourceSection = v.strictObject({
  ...v.pick(SourceSection, [
    'codec',
    'deflate_level',
    'handshake_timeout_ms',
    'max_connections',
    'psk_file',
    'cert',
    'key',
    'ca',
    'insecure',
    'allow_open_psk',
  ]).entries,
  /** ferry-wire listen address for the source exports; no listener without it. */
  listen: v.optional(hostPort),
  /** Where each exported image's identity and cutover record live; default daemon.state_dir + "/source". */
  state_dir: v.optional(nonEmpty),
  /** An export whose image cannot be opened is tried again after this long, doubling up to open_retry_max_ms. */
  open_retry_min_ms: v.optional(v.pipe(integer, v.minValue(10), v.maxValue(3_600_000)), 1000),
  open_retry_max_ms: v.optional(v.pipe(integer, v.minValue(10), v.maxValue(3_600_000)), 60_000),
  export: v.optional(v.pipe(v.array(SourceExportSpec), v.maxLength(4096)), []),
});

export const MigrationSpec = v.pipe(
  v.strictObject({
    name,
    /** Background copy cap of this migration in bytes/s (all its disks together); 0 means none. */
    rate: v.optional(byteRate, 0),
    /** Share of the host's max_rate against other migrations when the host cap binds. */
    weight: v.optional(v.pipe(v.number(), v.gtValue(0), v.maxValue(1000)), 1),
    /** Start copying as soon as the migration is created (a declared migration on daemon start). */
    start: v.optional(v.boolean(), false),
    /** "manual" (ferry ctl cutover NAME, or the first write of the VM here) or "at-start" (the sources are no longer written). */
    cutover: v.optional(v.picklist(['manual', 'at-start']), 'manual'),
    disk: v.pipe(v.array(DiskSpec), v.minLength(1), v.maxLength(64)),
  }),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const spec = dataset.value;
    const seen = new Set<string>();
    spec.disk.forEach((d, i) => {
      if (seen.has(d.name)) addIssue({ path: pathTo(spec, ['disk', i, 'name']), message: `repeats "${d.name}"` });
      seen.add(d.name);
    });
    const images = new Set<string>();
    spec.disk.forEach((d, i) => {
      if (images.has(d.image))
        addIssue({ path: pathTo(spec, ['disk', i, 'image']), message: `is another disk's image too` });
      images.add(d.image);
    });
  }),
);
export type MigrationSpec = v.InferOutput<typeof MigrationSpec>;

export const DaemonSection = v.strictObject({
  /** Where the registry of migrations and every disk's block map live. */
  state_dir: v.optional(nonEmpty, '/var/lib/ferry/ferryd'),
  /** Control socket for `ferry ctl`. */
  control: v.optional(nonEmpty, '/run/ferry/ferryd.sock'),
  /** NBD listen address for every disk of every migration (chosen by export name). */
  listen: v.optional(hostPort, '127.0.0.1:10809'),
  /** Listen on this Unix socket instead of TCP. */
  socket: v.optional(nonEmpty),
  /** HOST:PORT (or PORT, on 127.0.0.1) for Prometheus metrics at /metrics. */
  metrics: v.optional(metricsAddress),
  /** Host-wide cap of all background copies together, bytes/s; 0 means none. On-demand fetches are never paced. */
  max_rate: v.optional(byteRate, 0),
  /** Migrations copying in the background at once; the others wait their turn. 0 means no limit. */
  max_concurrent_copies: v.optional(v.pipe(integer, v.minValue(0), v.maxValue(4096)), 0),
  /** Defaults of every disk. */
  block_size: v.optional(blockSize, 4096),
  fetch_timeout_ms: v.optional(positiveInt, 60_000),
  persist_interval_ms: v.optional(v.pipe(positiveInt, v.minValue(50)), 1000),
  reconnect_min_ms: v.optional(positiveInt, 100),
  reconnect_max_ms: v.optional(positiveInt, 5000),
  wire_stall_timeout_ms: v.optional(v.pipe(positiveInt, v.maxValue(3_600_000)), 20_000),
  nbd_stall_timeout_ms: v.optional(v.pipe(positiveInt, v.maxValue(3_600_000)), 30_000),
  ...controlLimits,
  /** Mode of the images and block maps the daemon creates. */
  file_mode: fileMode,
});

// A section left out is the section with every default ({} runs through its schema).
export const DaemonConfigSchema = v.pipe(
  v.strictObject({
    daemon: v.optional(DaemonSection, {}),
    nbd: v.optional(NbdSection, {}),
    copy: v.optional(CopySection, {}),
    wire: v.optional(WireSection, {}),
    log: v.optional(LogSection, {}),
    source: v.optional(DaemonSourceSection, {}),
    migration: v.optional(v.array(MigrationSpec), []),
  }),
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const config = dataset.value;
    for (const issue of sourceExportProblems(config.source.export, config.migration))
      addIssue({ path: pathTo(config, ['source', 'export', ...issue.path]), message: issue.message });
    if (config.source.open_retry_max_ms < config.source.open_retry_min_ms)
      addIssue({
        path: pathTo(config, ['source', 'open_retry_max_ms']),
        message: `must be at least open_retry_min_ms (${config.source.open_retry_min_ms})`,
      });
    if (config.source.export.length > 0 && !config.source.listen)
      addIssue({
        path: pathTo(config, ['source', 'listen']),
        message: 'is needed to serve the source exports (HOST:PORT)',
      });
    const names = new Set<string>();
    config.migration.forEach((m, i) => {
      if (names.has(m.name))
        addIssue({ path: pathTo(config, ['migration', i, 'name']), message: `repeats "${m.name}"` });
      names.add(m.name);
      m.disk.forEach((d, j) => {
        const size = d.block_size ?? config.daemon.block_size;
        if (config.copy.batch_blocks > batchBlocksLimit(size))
          addIssue({
            path: pathTo(config, ['migration', i, 'disk', j, 'block_size']),
            message: `${size} with copy.batch_blocks ${config.copy.batch_blocks} makes a batch larger than ${MAX_BATCH_BYTES} bytes`,
          });
      });
    });
  }),
);

export type DaemonConfig = v.InferOutput<typeof DaemonConfigSchema>;

/**
 * What is wrong with a set of source exports beside the migrations: a name
 * or an image twice, an export name a migration's disk is served under, or
 * an image that is a migration's destination too (one image, one owner: it
 * would be written by the copy and served as a source at once).
 */
export function sourceExportProblems(
  exports: SourceExportSpec[],
  migrations: MigrationSpec[],
): Array<{ path: Array<string | number>; message: string }> {
  const problems: Array<{ path: Array<string | number>; message: string }> = [];
  const names = new Map<string, string>();
  const images = new Map<string, string>();
  for (const m of migrations)
    for (const d of m.disk) {
      names.set(diskExportName(m.name, d), `the NBD export of migration ${m.name} disk ${d.name}`);
      images.set(path.resolve(d.image), `the image of migration ${m.name} disk ${d.name}`);
    }
  exports.forEach((e, i) => {
    const owner = names.get(e.name);
    if (owner) problems.push({ path: [i, 'name'], message: `"${e.name}" is ${owner} already` });
    names.set(e.name, `source export ${i}'s name`);
    const image = path.resolve(e.image);
    const holder = images.get(image);
    if (holder) problems.push({ path: [i, 'image'], message: `${e.image} is ${holder} already` });
    images.set(image, `source export ${e.name}'s image`);
  });
  return problems;
}
