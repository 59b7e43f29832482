/**
 * The destination's ferry-wire credentials from the config's [wire] section:
 * one reading for `ferry dest` and `ferry daemon`.
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
