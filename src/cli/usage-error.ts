/**
 * A command line or configuration the command cannot run with: exit code 2.
 * Anything else that stops a command is a runtime failure: exit code 1.
 */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

/** Runs a step that validates configuration; its failure is a usage error. */
export function asUsage<T>(step: () => T): T {
  try {
    return step();
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
}
