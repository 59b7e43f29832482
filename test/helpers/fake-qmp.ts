/**
 * A QMP server on a Unix socket for tests: greets, accepts qmp_capabilities,
 * and answers every other command through the test's handler. It records
 * every command it received and can send events. It shares no code with
 * ferry's QMP client.
 */
import net from 'node:net';

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

export type FakeAnswer = { return: unknown } | { error: { class: string; desc: string } } | 'no-answer';

export interface ReceivedCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

export class FakeQmp {
  readonly received: ReceivedCommand[] = [];
  private readonly server: net.Server;
  private readonly clients = new Set<net.Socket>();
  greet = true;

  constructor(private readonly handler: (cmd: ReceivedCommand, qmp: FakeQmp) => FakeAnswer) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  static async start(
    t: Teardownable,
    socketPath: string,
    handler: (cmd: ReceivedCommand, qmp: FakeQmp) => FakeAnswer,
  ): Promise<FakeQmp> {
    const fake = new FakeQmp(handler);
    await new Promise<void>((resolve) => fake.server.listen(socketPath, resolve));
    t.teardown(() => fake.close());
    return fake;
  }

  /** Commands other than qmp_capabilities, by name, in order. */
  get commands(): string[] {
    return this.received.map((c) => c.execute).filter((c) => c !== 'qmp_capabilities');
  }

  event(name: string, data: Record<string, unknown>): void {
    const line =
      JSON.stringify({ event: name, data, timestamp: { seconds: 1700000000, microseconds: 250000 } }) + '\r\n';
    for (const c of this.clients) c.write(line);
  }

  /** Writes raw bytes to every client (for malformed input). */
  raw(text: string): void {
    for (const c of this.clients) c.write(text);
  }

  /** Drops every client connection. */
  hangUp(): void {
    for (const c of this.clients) c.destroy();
  }

  close(): Promise<void> {
    this.hangUp();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: net.Socket): void {
    this.clients.add(socket);
    socket.on('close', () => this.clients.delete(socket));
    socket.on('error', () => undefined);
    if (this.greet)
      socket.write(
        JSON.stringify({
          QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'fake' }, capabilities: ['oob'] },
        }) + '\r\n',
      );
    let pending = '';
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => {
      pending += text;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(pending.slice(0, nl)) as ReceivedCommand;
        pending = pending.slice(nl + 1);
        this.received.push(cmd);
        const answer: FakeAnswer = cmd.execute === 'qmp_capabilities' ? { return: {} } : this.handler(cmd, this);
        if (answer === 'no-answer') continue;
        socket.write(JSON.stringify({ ...answer, id: cmd.id }) + '\r\n');
      }
    });
  }
}
