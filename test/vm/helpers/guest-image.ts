/**
 * The test guest: the host's kernel (/boot/vmlinuz-*) and an initramfs made of
 * busybox (static), the virtio block modules of that kernel when it does not
 * have them built in, and test/vm/guest/init.sh as /init.
 */
import fs from 'node:fs';
import path from 'node:path';
import { buildCpio, type CpioEntry } from './cpio';

const REPO = path.resolve(__dirname, '..', '..', '..', '..');
const INIT_SCRIPT = path.join(REPO, 'test', 'vm', 'guest', 'init.sh');
/** Load order: each module after the ones it needs. */
const VIRTIO_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_pci_legacy_dev',
  'virtio_pci_modern_dev',
  'virtio_pci',
  'virtio_blk',
];

export interface GuestImage {
  kernel: string;
  initrd: string;
  kernelVersion: string;
}

/** A busybox that runs without shared libraries, or null. */
function staticBusybox(): string | null {
  for (const candidate of ['/bin/busybox', '/usr/bin/busybox']) {
    if (!fs.existsSync(candidate)) continue;
    // a dynamic executable names its interpreter in the file
    const head = fs
      .readFileSync(candidate)
      .subarray(0, 64 * 1024)
      .toString('latin1');
    if (!head.includes('/lib64/ld-linux') && !head.includes('/lib/ld-linux')) return candidate;
  }
  return null;
}

function kernelConfig(version: string): string {
  const file = `/boot/config-${version}`;
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
}

/** Why the guest cannot be built here, or null when it can. */
export function guestUnavailable(): string | null {
  return findParts() === null ? whyMissing() : null;
}

function kernels(): string[] {
  if (!fs.existsSync('/boot')) return [];
  return fs
    .readdirSync('/boot')
    .filter((f) => f.startsWith('vmlinuz-'))
    .sort()
    .reverse();
}

interface Parts {
  kernel: string;
  version: string;
  busybox: string;
  modules: string[];
}

function modulePaths(version: string): string[] | null {
  const config = kernelConfig(version);
  if (/^CONFIG_VIRTIO_BLK=y$/m.test(config) && /^CONFIG_VIRTIO_PCI=y$/m.test(config)) return [];
  const root = `/lib/modules/${version}/kernel/drivers`;
  const found = VIRTIO_MODULES.map((m) =>
    [`${root}/virtio/${m}.ko`, `${root}/block/${m}.ko`].find((p) => fs.existsSync(p)),
  );
  // A module missing here is built in (virtio_pci_legacy_dev is only a module on some kernels);
  // without virtio_blk, a kernel not configured with it built in has no disk.
  if (!found[VIRTIO_MODULES.indexOf('virtio_blk')] && !/^CONFIG_VIRTIO_BLK=y$/m.test(config)) return null;
  return found.filter((p): p is string => p !== undefined);
}

function findParts(): Parts | null {
  const busybox = staticBusybox();
  if (!busybox) return null;
  for (const k of kernels()) {
    const version = k.slice('vmlinuz-'.length);
    const file = path.join('/boot', k);
    try {
      fs.accessSync(file, fs.constants.R_OK);
    } catch {
      continue;
    }
    const modules = modulePaths(version);
    if (modules) return { kernel: file, version, busybox, modules };
  }
  return null;
}

function whyMissing(): string {
  if (!staticBusybox()) return 'no static busybox (install busybox-static)';
  if (kernels().length === 0) return 'no kernel in /boot (install linux-image-amd64)';
  return 'no readable kernel in /boot with virtio_blk built in or in /lib/modules';
}

/** Builds the initramfs into dir; throws naming what is missing. */
export function buildGuestImage(dir: string): GuestImage {
  const parts = findParts();
  if (!parts) throw new Error(`test guest: ${whyMissing()}`);
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'proc', 'sys', 'tmp', 'lib', 'lib/modules'].map((p) => ({ kind: 'dir' as const, path: p })),
    { kind: 'char', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'file', path: 'bin/busybox', data: fs.readFileSync(parts.busybox), mode: 0o755 },
    { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
    { kind: 'file', path: 'init', data: fs.readFileSync(INIT_SCRIPT), mode: 0o755 },
    ...parts.modules.map((m) => ({
      kind: 'file' as const,
      path: `lib/modules/${path.basename(m)}`,
      data: fs.readFileSync(m),
    })),
  ];
  const initrd = path.join(dir, 'initramfs.cpio');
  fs.writeFileSync(initrd, buildCpio(entries));
  return { kernel: parts.kernel, initrd, kernelVersion: parts.version };
}
