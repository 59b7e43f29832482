/**
 * Opens the most faithful emulated WAN this machine allows: the namespace bridge, else the
 * loopback proxy with a note saying why.
 */
import type { Logger } from 'pino';
import { NetnsBridge } from './netns-bridge';
import { ProxyLink } from './proxy-link';
import { checkWanLinkOptions, type WanLink, type WanLinkOptions } from './wan-link';

export { checkWanLinkOptions } from './wan-link';
export type { LinkFidelity, WanCounters, WanLink, WanLinkOptions } from './wan-link';
export { NetnsBridge } from './netns-bridge';
export { ProxyLink } from './proxy-link';

export async function openWanLink(options: WanLinkOptions, log?: Logger): Promise<WanLink> {
  checkWanLinkOptions(options);
  try {
    return await NetnsBridge.open(options, log);
  } catch (err) {
    const why = (err as Error).message;
    log?.warn({ why }, 'wan link: namespace bridge unavailable, using the loopback proxy');
    return new ProxyLink(options, why, log);
  }
}
