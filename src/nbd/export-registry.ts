/**
 * The exports of a server that serves many disks (a destination host with
 * many migrations): exports come and go while the server runs. A client
 * names the export it wants; the empty name is a default only when one was
 * chosen, so that a client that names nothing never lands on some other disk.
 */
import type { ExportTable, NbdExport } from './negotiation';
import { MAX_STRING } from './protocol';

export class ExportRegistry implements ExportTable {
  private readonly byName = new Map<string, NbdExport>();

  /** defaultName: the export the empty name selects; null means the empty name is unknown. */
  constructor(private defaultName: string | null = null) {}

  /** Adds an export; a second export of the same name is refused (it would shadow the first's disk). */
  add(entry: NbdExport): void {
    if (entry.name === '') throw new Error('an export needs a name');
    if (Buffer.byteLength(entry.name) > MAX_STRING)
      throw new Error(`export name is longer than ${MAX_STRING} bytes: ${entry.name.slice(0, 40)}...`);
    if (this.byName.has(entry.name)) throw new Error(`export "${entry.name}" is already served`);
    this.byName.set(entry.name, entry);
  }

  /** Stops offering an export to new clients; connections already open on it keep their device. */
  remove(name: string): boolean {
    return this.byName.delete(name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  setDefault(name: string | null): void {
    this.defaultName = name;
  }

  find(name: string): NbdExport | undefined {
    if (name === '') return this.defaultName === null ? undefined : this.byName.get(this.defaultName);
    return this.byName.get(name);
  }

  list(): NbdExport[] {
    return [...this.byName.values()];
  }
}
