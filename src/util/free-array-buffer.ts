/**
 * Frees the memory of an ArrayBuffer nothing uses any more at V8's next
 * young-generation collection (a few milliseconds away while data moves)
 * rather than at its next full one. A buffer that lived through a network
 * round trip sits in the old generation, and V8 starts a full collection for
 * external memory only after it has grown by 64 MiB: dropped batch and fetch
 * buffers made up most of a destination's peak over the ferry wire
 * (docs/benchmarks.md, "Memory, third pass").
 *
 * Transferring the memory to a new, young ArrayBuffer that nothing
 * references does this without a copy; the old one is left detached, so
 * every view of it has length 0. Only for memory the caller owns outright:
 * never a slice of Node's shared slab, never one another view still reads.
 */
export function freeArrayBuffer(memory: ArrayBuffer): void {
  if (memory.byteLength === 0) return; // already detached (transferred elsewhere)
  structuredClone(memory, { transfer: [memory] });
}
