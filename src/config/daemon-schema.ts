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
import { z } from 'zod';
import { batchBlocksLimit, MAX_BATCH_BYTES } from '../util/limits';
import {
  blockSize,
  controlLimits,
  CopySection,
  hostPort,
  LogSection,
  metricsAddress,
  NbdSection,
  SourceSection,
  WireSection,
} from './schema';

const positiveInt = z.number().int().positive();
const byteRate = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** Migration and disk names appear in export names, file names, metric labels and log lines. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const name = z
  .string()
  .regex(NAME_PATTERN, 'must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit');

export const DiskSpec = z
  .object({
    /** The disk's name within its migration (vda, disk0...). */
    name,
    /** ferry://HOST:PORT/EXPORT, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH. */
    source: z.string().min(1).max(4096),
    /** Local image (file, created sparse at the source's size; or a block device). */
    image: z.string().min(1).max(4096),
    /** NBD export name the VM opens; default MIGRATION/DISK. */
    export: z.string().min(1).max(4096).optional(),
    /** Unit of copy and state; default daemon.block_size. */
    block_size: blockSize.optional(),
    /** Plain NBD source only: the QEMU dirty bitmap that records the source's writes. */
    dirty_bitmap: z.string().min(1).max(1023).optional(),
  })
  .strict();
export type DiskSpec = z.infer<typeof DiskSpec>;

/** The NBD export name a disk is served under: its own, or MIGRATION/DISK. */
export function diskExportName(migration: string, disk: DiskSpec): string {
  return disk.export ?? `${migration}/${disk.name}`;
}

/** Source export names go into HELLO, NBD negotiation, metric labels and log lines. */
export const EXPORT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

export const SourceExportSpec = z
  .object({
    /** The name destinations give (ferry://HOST:PORT/NAME), and the source VM's NBD export name when tracked. */
    name: z
      .string()
      .regex(
        EXPORT_NAME_PATTERN,
        'must be 1-128 letters, digits, ".", "_", ":", "/" or "-", starting with a letter or digit',
      ),
    /** Raw image (file or block device) served to destinations. */
    image: z.string().min(1).max(4096),
    /**
     * "read-only": nothing on this host writes the image (a stopped VM, a snapshot); locked shared.
     * "tracked": the source VM runs here and writes through the daemon's NBD listener under this
     * name; every write is reported to the destinations and fenced at cutover; locked exclusively.
     */
    writes: z.enum(['read-only', 'tracked']).default('read-only'),
  })
  .strict();
export type SourceExportSpec = z.infer<typeof SourceExportSpec>;

export const DaemonSourceSection = SourceSection.pick({
  codec: true,
  deflate_level: true,
  handshake_timeout_ms: true,
  max_connections: true,
  psk_file: true,
  cert: true,
  key: true,
  ca: true,
  insecure: true,
  allow_open_psk: true,
})
  .extend({
    /** ferry-wire listen address for the source exports; no listener without it. */
    listen: hostPort.optional(),
    /** Where each exported image's identity and cutover record live; default daemon.state_dir + "/source". */
    state_dir: z.string().min(1).optional(),
    /** An export whose image cannot be opened is tried again after this long, doubling up to open_retry_max_ms. */
    open_retry_min_ms: z.number().int().min(10).max(3_600_000).default(1000),
    open_retry_max_ms: z.number().int().min(10).max(3_600_000).default(60_000),
    export: z.array(SourceExportSpec).max(4096).default([]),
  })
  .strict();

export const MigrationSpec = z
  .object({
    name,
    /** Background copy cap of this migration in bytes/s (all its disks together); 0 means none. */
    rate: byteRate.default(0),
    /** Share of the host's max_rate against other migrations when the host cap binds. */
    weight: z.number().positive().max(1000).default(1),
    /** Start copying as soon as the migration is created (a declared migration on daemon start). */
    start: z.boolean().default(false),
    /** "manual" (ferry ctl cutover NAME, or the first write of the VM here) or "at-start" (the sources are no longer written). */
    cutover: z.enum(['manual', 'at-start']).default('manual'),
    disk: z.array(DiskSpec).min(1).max(64),
  })
  .strict()
  .superRefine((spec, ctx) => {
    const seen = new Set<string>();
    spec.disk.forEach((d, i) => {
      if (seen.has(d.name)) ctx.addIssue({ code: 'custom', path: ['disk', i, 'name'], message: `repeats "${d.name}"` });
      seen.add(d.name);
    });
    const images = new Set<string>();
    spec.disk.forEach((d, i) => {
      if (images.has(d.image))
        ctx.addIssue({ code: 'custom', path: ['disk', i, 'image'], message: `is another disk's image too` });
      images.add(d.image);
    });
  });
export type MigrationSpec = z.infer<typeof MigrationSpec>;

export const DaemonSection = z
  .object({
    /** Where the registry of migrations and every disk's block map live. */
    state_dir: z.string().min(1).default('/var/lib/ferry/ferryd'),
    /** Control socket for `ferry ctl`. */
    control: z.string().min(1).default('/run/ferry/ferryd.sock'),
    /** NBD listen address for every disk of every migration (chosen by export name). */
    listen: hostPort.default('127.0.0.1:10809'),
    /** Listen on this Unix socket instead of TCP. */
    socket: z.string().min(1).optional(),
    /** HOST:PORT (or PORT, on 127.0.0.1) for Prometheus metrics at /metrics. */
    metrics: metricsAddress.optional(),
    /** Host-wide cap of all background copies together, bytes/s; 0 means none. On-demand fetches are never paced. */
    max_rate: byteRate.default(0),
    /** Migrations copying in the background at once; the others wait their turn. 0 means no limit. */
    max_concurrent_copies: z.number().int().min(0).max(4096).default(0),
    /** Defaults of every disk. */
    block_size: blockSize.default(4096),
    fetch_timeout_ms: positiveInt.default(60_000),
    persist_interval_ms: positiveInt.min(50).default(1000),
    reconnect_min_ms: positiveInt.default(100),
    reconnect_max_ms: positiveInt.default(5000),
    wire_stall_timeout_ms: positiveInt.max(3_600_000).default(20_000),
    nbd_stall_timeout_ms: positiveInt.max(3_600_000).default(30_000),
    ...controlLimits,
    /** Mode of the images and block maps the daemon creates. */
    file_mode: z
      .string()
      .regex(/^0?[0-7]{3}$/, 'must be an octal mode such as "0600"')
      .refine((m) => (parseInt(m, 8) & 0o002) === 0, 'must not let others write the image')
      .default('0600'),
  })
  .strict();

export const DaemonConfigSchema = z
  .object({
    daemon: DaemonSection.default(DaemonSection.parse({})),
    nbd: NbdSection.default(NbdSection.parse({})),
    copy: CopySection.default(CopySection.parse({})),
    wire: WireSection.default(WireSection.parse({})),
    log: LogSection.default(LogSection.parse({})),
    source: DaemonSourceSection.default(DaemonSourceSection.parse({})),
    migration: z.array(MigrationSpec).default([]),
  })
  .strict()
  .superRefine((config, ctx) => {
    for (const issue of sourceExportProblems(config.source.export, config.migration))
      ctx.addIssue({ code: 'custom', path: ['source', 'export', ...issue.path], message: issue.message });
    if (config.source.open_retry_max_ms < config.source.open_retry_min_ms)
      ctx.addIssue({
        code: 'custom',
        path: ['source', 'open_retry_max_ms'],
        message: `must be at least open_retry_min_ms (${config.source.open_retry_min_ms})`,
      });
    if (config.source.export.length > 0 && !config.source.listen)
      ctx.addIssue({
        code: 'custom',
        path: ['source', 'listen'],
        message: 'is needed to serve the source exports (HOST:PORT)',
      });
    const names = new Set<string>();
    config.migration.forEach((m, i) => {
      if (names.has(m.name))
        ctx.addIssue({ code: 'custom', path: ['migration', i, 'name'], message: `repeats "${m.name}"` });
      names.add(m.name);
      m.disk.forEach((d, j) => {
        const size = d.block_size ?? config.daemon.block_size;
        if (config.copy.batch_blocks > batchBlocksLimit(size))
          ctx.addIssue({
            code: 'custom',
            path: ['migration', i, 'disk', j, 'block_size'],
            message: `${size} with copy.batch_blocks ${config.copy.batch_blocks} makes a batch larger than ${MAX_BATCH_BYTES} bytes`,
          });
      });
    });
  });

export type DaemonConfig = z.infer<typeof DaemonConfigSchema>;

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
