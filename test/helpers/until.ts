/**
 * Waits for a state that announces itself with no event (a counter, a queue
 * length, a status field) by checking it every few milliseconds, and fails
 * naming what it waited for once `timeoutMs` has passed. The bound is a
 * safety net sized for a loaded machine, never a measurement.
 */
export async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 30_000,
  everyMs = 10,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
