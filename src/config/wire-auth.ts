/**
 * Ferry-wire credentials from the config: the destination's from [wire] (one
 * reading for `ferry dest` and `ferry daemon`), the source's from [source]
 * (one reading for `ferry source` and `ferry daemon`'s source listener).
 */
import { loadAuth, type WireAuth } from '../wire/auth';
import type { FerryConfig } from './schema';

export function destWireAuth(w: FerryConfig['wire']): WireAuth {
  return loadAuth(
    {
      pskFile: w.psk_file,
      cert: w.cert,
      key: w.key,
      ca: w.ca,
      insecure: w.insecure,
      allowOpenPsk: w.allow_open_psk,
      peerName: w.peer_name,
    },
    'dest',
  );
}

/** The keys of [source] that choose how destinations authenticate. */
export interface SourceAuthKeys {
  psk_file?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure: boolean;
  allow_open_psk: boolean;
}

export function sourceWireAuth(s: SourceAuthKeys): WireAuth {
  return loadAuth(
    {
      pskFile: s.psk_file,
      cert: s.cert,
      key: s.key,
      ca: s.ca,
      insecure: s.insecure,
      allowOpenPsk: s.allow_open_psk,
    },
    'source',
  );
}
