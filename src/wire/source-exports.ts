/**
 * Which image a destination's HELLO asks for, by export name. `ferry source`
 * serves one image, which the empty name also selects (destinations of older
 * releases may send it); a source serving many names none by default, so
 * that a destination that names nothing never copies some other disk.
 */
import type { SourceImage } from './source-image';

export interface SourceExportTable {
  /** The image served under `name`, or why there is none. */
  find(name: string): SourceImage | string;
}

export class SingleSourceExport implements SourceExportTable {
  constructor(private readonly image: SourceImage) {}

  find(name: string): SourceImage | string {
    if (name === '' || name === this.image.name) return this.image;
    return `unknown export "${name}" (this source serves "${this.image.name}")`;
  }
}

/** Names listed in a refusal at most: the reason has to fit a REFUSE frame and a log line. */
const NAMES_LISTED = 8;

export class NamedSourceExports implements SourceExportTable {
  private readonly byName = new Map<string, SourceImage>();
  /** Names declared but not open now, and why: a HELLO for one hears that rather than "unknown". */
  private readonly notOpen = new Map<string, string>();

  /** Marks `name` declared but not open (`reason`), or no longer so (null). */
  setNotOpen(name: string, reason: string | null): void {
    if (reason === null) this.notOpen.delete(name);
    else this.notOpen.set(name, reason);
  }

  add(image: SourceImage): void {
    if (this.byName.has(image.name)) throw new Error(`source export "${image.name}" is already served`);
    this.byName.set(image.name, image);
  }

  remove(name: string): void {
    this.byName.delete(name);
  }

  get(name: string): SourceImage | undefined {
    return this.byName.get(name);
  }

  list(): SourceImage[] {
    return [...this.byName.values()];
  }

  find(name: string): SourceImage | string {
    const image = name === '' ? undefined : this.byName.get(name);
    if (image) return image;
    const why = this.notOpen.get(name);
    if (why !== undefined)
      return `export "${name}" is declared but its image is not open (${why}); the source keeps trying to open it`;
    const names = [...this.byName.keys()].sort();
    const shown = names.slice(0, NAMES_LISTED).map((n) => `"${n}"`);
    if (names.length > NAMES_LISTED) shown.push(`and ${names.length - NAMES_LISTED} more`);
    const serves = names.length ? `this source serves ${shown.join(', ')}` : 'this source serves no export now';
    return name === ''
      ? `no export named: this source serves several images and selects one only by name (${serves})`
      : `unknown export "${name}" (${serves})`;
  }
}
