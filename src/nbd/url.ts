/** NBD URIs as qemu and libnbd write them: nbd://host[:port][/export], nbd+unix:///export?socket=PATH. */
import type { ListenAddress } from './server';

export interface NbdTarget {
  address: ListenAddress;
  exportName: string;
}

export function parseNbdUrl(text: string): NbdTarget {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`not an NBD URL: "${text}" (expected nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)`);
  }
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd:') {
    if (!url.hostname) throw new Error(`NBD URL "${text}" has no host`);
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    return { address: { host, port: url.port ? Number(url.port) : 10809 }, exportName };
  }
  if (url.protocol === 'nbd+unix:') {
    const socketPath = url.searchParams.get('socket');
    if (!socketPath) throw new Error(`NBD URL "${text}" needs ?socket=PATH`);
    return { address: { socketPath }, exportName };
  }
  throw new Error(`unsupported URL scheme "${url.protocol}" in "${text}" (use nbd:// or nbd+unix://)`);
}
