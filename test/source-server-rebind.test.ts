/**
 * WireSourceServer.rebind: new connections move to the new listening socket,
 * the old address takes none, a connection accepted before stays open until
 * it ends, and an address that cannot be bound leaves the listener where it
 * was.
 */
import t from 'tap';
import net from 'node:net';
import pino from 'pino';
import type { CodecPool } from '../src/pool';
import { CodecChooser } from '../src/wire/codec-chooser';
import { NamedSourceExports } from '../src/wire/source-exports';
import { WireSourceServer } from '../src/wire/source-server';

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** Resolves with the socket once connected, or with the error code. */
function connect(port: number): Promise<net.Socket | string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => resolve(s));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

t.test('rebind moves new connections and keeps the open ones', async (t) => {
  const server = new WireSourceServer({
    exports: new NamedSourceExports(),
    auth: { kind: 'insecure' },
    pool: { isFull: false, workers: 1 } as unknown as CodecPool,
    chooser: new CodecChooser('none', ['none'], 1),
    log: pino({ level: 'silent' }),
    handshakeTimeoutMs: 600_000,
  });
  t.teardown(() => server.close());
  const first = portOf(await server.listen('127.0.0.1', 0));
  const early = await connect(first);
  if (typeof early === 'string') throw new Error(`cannot connect: ${early}`);
  let earlyClosed = false;
  early.on('close', () => (earlyClosed = true));
  early.resume(); // read, so that an end from the server would be seen
  await new Promise<void>((resolve) => {
    const check = (): void => (server.connections === 1 ? resolve() : void setImmediate(check));
    check();
  });

  const second = portOf(await server.rebind({ host: '127.0.0.1', port: 0 }));
  t.not(second, first, 'a new address');
  t.equal(server.connections, 1, 'the server still has the connection accepted before');
  t.equal(await connect(first), 'ECONNREFUSED', 'the old address takes no new connection');
  const late = await connect(second);
  t.type(late, net.Socket, 'the new one does');
  if (typeof late !== 'string') late.destroy();
  t.equal(earlyClosed, false, 'the connection accepted before is still open');

  const squatter = net.createServer();
  await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => squatter.close(() => resolve())));
  const taken = (squatter.address() as net.AddressInfo).port;
  await t.rejects(server.rebind({ host: '127.0.0.1', port: taken }), /EADDRINUSE/);
  t.equal(server.isListening, true);
  const after = await connect(second);
  t.type(after, net.Socket, 'a failed rebind leaves the listener where it was');
  if (typeof after !== 'string') after.destroy();

  // On the same address (new settings only): the old socket is let go first, then taken again.
  const same = portOf(await server.rebind(null, { handshakeTimeoutMs: 500_000 }));
  t.equal(same, second, 'the same address');
  const again = await connect(second);
  t.type(again, net.Socket);
  if (typeof again !== 'string') again.destroy();
  t.equal(earlyClosed, false, 'the first connection outlived every rebind');

  const closed = new Promise<void>((resolve) => (earlyClosed ? resolve() : early.once('close', () => resolve())));
  await server.close();
  await closed;
  t.pass('close ends the connections the old listeners accepted');
});
