// Piscina task queue with two priorities: urgent tasks (a block a VM waits for)
// always leave before background batches; FIFO within each priority.
import { Piscina, type TaskQueue } from 'piscina';

type Task = Parameters<TaskQueue['push']>[0];

export interface QueueOptions {
  urgent?: boolean;
}

/** FIFO with O(1) amortized shift. */
class Fifo<T> {
  private items: T[] = [];
  private head = 0;

  get size(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  unshift(item: T): void {
    if (this.head > 0) this.items[--this.head] = item;
    else this.items.unshift(item);
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined as T;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  remove(item: T): boolean {
    const at = this.items.indexOf(item, this.head);
    if (at < 0) return false;
    this.items.splice(at, 1);
    return true;
  }
}

export function isUrgent(task: Task): boolean {
  const options = task[Piscina.queueOptionsSymbol as never] as QueueOptions | null | undefined;
  return options?.urgent === true;
}

export class PriorityTaskQueue implements TaskQueue {
  private readonly urgent = new Fifo<Task>();
  private readonly background = new Fifo<Task>();
  /** Called after a task leaves the queue (for backpressure listeners). */
  onShift: (() => void) | undefined;

  get size(): number {
    return this.urgent.size + this.background.size;
  }

  get urgentSize(): number {
    return this.urgent.size;
  }

  get backgroundSize(): number {
    return this.background.size;
  }

  push(task: Task): void {
    (isUrgent(task) ? this.urgent : this.background).push(task);
  }

  /** Piscina (stricterFIFO) puts back a task it could not dispatch: front of its priority. */
  unshift(task: Task): void {
    (isUrgent(task) ? this.urgent : this.background).unshift(task);
  }

  shift(): Task | null {
    const task = this.urgent.shift() ?? this.background.shift() ?? null;
    if (task) this.onShift?.();
    return task;
  }

  remove(task: Task): void {
    if (!this.urgent.remove(task)) this.background.remove(task);
    this.onShift?.();
  }
}
