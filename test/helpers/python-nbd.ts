/**
 * Runs a Python snippet with libnbd's bindings (python3-libnbd, what nbdsh
 * uses), for requests the command-line tools will not send. The snippet gets
 * `nbd`, a handle `h` and `URI`, and prints one JSON value as its result.
 */
import { spawnSync } from 'node:child_process';
import { runOk } from './run';

let python: string | null | undefined;

/** A python3 that can `import nbd`, or null. The system one has it even when another python3 is first on PATH. */
export function pythonWithNbd(): string | null {
  if (python !== undefined) return python;
  python = null;
  for (const candidate of ['/usr/bin/python3', 'python3']) {
    if (spawnSync(candidate, ['-c', 'import nbd'], { stdio: 'ignore' }).status === 0) {
      python = candidate;
      break;
    }
  }
  return python;
}

export async function runNbdPython<T>(uri: string, body: string, timeoutMs = 60_000): Promise<T> {
  const program = ['import json, errno, sys, nbd', 'URI = sys.argv[1]', 'h = nbd.NBD()', body].join('\n');
  const out = await runOk(pythonWithNbd() ?? 'python3', ['-c', program, uri], { timeoutMs });
  const lines = out.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as T;
}

/** Python helper for snippets: `attempt(fn)` → 'ok' or the errno name the server replied with. */
export const PY_ATTEMPT = `
def attempt(fn):
    try:
        fn()
        return 'ok'
    except nbd.Error as e:
        # the bindings give the errno's name ('EINVAL'), or None for a local failure
        return e.errno if isinstance(e.errno, str) else 'no errno: %s' % e.string
`;
