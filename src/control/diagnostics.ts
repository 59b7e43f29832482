/**
 * What the process holds open, for `ferry ctl status --json` (key
 * `diagnostics`): a leak of timers or sockets shows as a count that does not
 * come back to where it was once the load is gone.
 */

export interface Diagnostics {
  /** process.getActiveResourcesInfo() counted by kind: Timeout, TCPSocketWrap, PipeWrap, FSReqCallback… */
  activeResources: Record<string, number>;
}

export function processDiagnostics(): Diagnostics {
  const activeResources: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) activeResources[kind] = (activeResources[kind] ?? 0) + 1;
  return { activeResources };
}
