/**
 * One image a ferry-wire source serves, under one export name: its lock,
 * its file, its identity, its sessions and write tracking, and its
 * figures. `ferry source` serves one; `ferry daemon` serves many by name.
 *
 * Read-only: the image is locked shared and opened read-only, so nothing in
 * this process can write it and no session tracks writes. Tracked: the
 * source's VM still writes it (through an NBD export of `vmDevice`), so it
 * is locked exclusively and every write through that device is reported to
 * every destination session, fenced at cutover and recorded.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { FileDevice } from '../store/file-device';
import { lockImage } from '../store/image-lock';
import { TrackingDevice } from '../store/tracking-device';
import { cutoverRecordPath } from './cutover-record';
import { imageIdentity, imageKey } from './image-identity';
import type { FetchCounters } from './source-fetch';
import { SourceSessions, type SourceStatus } from './source-sessions';

export type SourceWrites = 'read-only' | 'tracked';

export interface SourceImageOptions {
  /** The export name destinations give in HELLO (and the VM's NBD export name when tracked). */
  name: string;
  image: string;
  writes: SourceWrites;
  /** Where the image's identity and its cutover record live; exists. */
  stateDir: string;
  /** Sessions kept at once (each holds a bitmap of the image). */
  maxSessions: number;
  log: Logger;
}

export interface SourceImageStatus extends SourceStatus {
  export: string;
  image: string;
  writes: SourceWrites;
  identity: string;
  size: number;
  /** Wire connections open now, and the sessions among them that have at least one. */
  wireConnections: number;
  destinationsConnected: number;
  batches: number;
  bytesRead: number;
  bytesSent: number;
  references: number;
}

export class SourceImage {
  readonly counters: FetchCounters = { batches: 0, bytesRead: 0, bytesSent: 0, references: 0 };
  /** Wire connections that said HELLO for this export and are still open. */
  wireConnections = 0;
  private closed = false;

  private constructor(
    readonly name: string,
    readonly image: string,
    readonly writes: SourceWrites,
    /** The image as read for destinations. */
    readonly device: FileDevice,
    /** The VM's view when tracked: every write through it is reported; null when read-only. */
    readonly vmDevice: TrackingDevice | null,
    readonly identity: string,
    readonly sessions: SourceSessions,
    private readonly unlock: () => void,
  ) {}

  /** Locks and opens the image; throws (holding nothing) when it is in use, missing, or its record is not its own. */
  static open(o: SourceImageOptions): SourceImage {
    const tracked = o.writes === 'tracked';
    const unlock = lockImage(o.image, tracked ? 'exclusive' : 'shared');
    let device: FileDevice | null = null;
    try {
      device = FileDevice.open(o.image, { readOnly: !tracked });
      const vmDevice = tracked ? new TrackingDevice(device, o.log.child({ component: 'fence' })) : null;
      const identity = imageIdentity(o.image, o.stateDir, imageKey(o.image));
      const sessions = new SourceSessions({
        imageSize: device.size,
        image: path.resolve(o.image),
        identity,
        device: vmDevice,
        recordPath: cutoverRecordPath(o.stateDir, o.image),
        log: o.log.child({ component: 'tracking' }),
        maxSessions: o.maxSessions,
      });
      return new SourceImage(o.name, o.image, o.writes, device, vmDevice, identity, sessions, unlock);
    } catch (e) {
      void device?.close().catch(() => undefined);
      unlock();
      throw e;
    }
  }

  status(): SourceImageStatus {
    const s = this.sessions.status();
    return {
      export: this.name,
      image: this.image,
      writes: this.writes,
      identity: this.identity,
      size: this.device.size,
      wireConnections: this.wireConnections,
      destinationsConnected: s.sessions.filter((x) => x.connections > 0).length,
      ...this.counters,
      ...s,
    };
  }

  /** Stops its sessions, flushes what its VM wrote, closes the file and releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sessions.close();
    try {
      if (!this.device.readOnly) await this.device.flush();
      await this.device.close();
    } finally {
      this.unlock();
    }
  }
}
