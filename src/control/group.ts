/**
 * A group name (or number) to its id, from /etc/group: Node has no
 * getgrnam, and the control socket's group must be exact or refused.
 */
import fs from 'node:fs';

export function groupId(group: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(group)) return Number(group);
  let text: string;
  try {
    text = fs.readFileSync(groupFile, 'utf8');
  } catch (e) {
    throw new Error(`control socket: cannot read ${groupFile} to find group "${group}"`, { cause: e });
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new Error(`control socket: no group "${group}" in ${groupFile}`);
}
