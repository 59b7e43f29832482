/** ferry://HOST:PORT/EXPORT, the address of a ferry source. */
export interface FerryTarget {
  host: string;
  port: number;
  exportName: string;
}

/** The port a ferry source listens on when the URL names none. */
export const DEFAULT_FERRY_PORT = 10810;

export function parseFerryUrl(text: string): FerryTarget {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`not a ferry URL: "${text}" (expected ferry://HOST:PORT/EXPORT)`);
  }
  if (url.protocol !== 'ferry:') throw new Error(`not a ferry URL: "${text}" (expected ferry://HOST:PORT/EXPORT)`);
  if (!url.hostname) throw new Error(`ferry URL "${text}" has no host`);
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port ? Number(url.port) : DEFAULT_FERRY_PORT,
    exportName: decodeURIComponent(url.pathname.replace(/^\//, '')),
  };
}
