/**
 * systemd readiness (Type=notify): the daemon tells the notify socket READY=1
 * with its own PID as the sender, and only once its listeners answer. A
 * datagram listener stands in for systemd and reads the sender's
 * credentials the way systemd does (SO_PASSCRED), since a message from a
 * helper process is only attributed to the service by the PID it carries.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { ctl, ferrydConfig, nbdPort, startFerryd } from './helpers/ferryd';
import { tempDir } from './helpers/temp-dir';
import { requireTool } from './helpers/tools';

// Prints one JSON line per datagram: the sender's PID from its credentials, and the message.
const NOTIFY_LISTENER = `
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print(json.dumps({"listening": True}), flush=True)
s.settimeout(300)
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iii", data[:12])[0]
    print(json.dumps({"pid": pid, "message": msg.decode()}), flush=True)
`;

interface Datagram {
  listening?: boolean;
  pid?: number;
  message?: string;
}

t.test('READY=1 comes from the daemon PID once its NBD listener and control socket answer', async (t) => {
  if (!requireTool(t, 'systemd-notify', 'python3')) return;
  const dir = tempDir(t);
  const notifySocket = path.join(dir, 'notify');
  const listener = spawn('python3', ['-c', NOTIFY_LISTENER, notifySocket], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void listener.kill());
  const datagrams = readline.createInterface({ input: listener.stdout })[Symbol.asyncIterator]();
  const next = async (): Promise<Datagram> => {
    const line = await datagrams.next();
    if (line.done) throw new Error('the notify listener ended');
    return JSON.parse(line.value) as Datagram;
  };
  t.same(await next(), { listening: true });

  const saved = process.env.NOTIFY_SOCKET;
  process.env.NOTIFY_SOCKET = notifySocket;
  t.teardown(() => {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
  });
  const d = ferrydConfig(dir);
  const daemon = await startFerryd(t, d);
  delete process.env.NOTIFY_SOCKET;

  const ready = await next();
  t.equal(ready.pid, daemon.child.pid, 'sent with the daemon PID as the sender (NotifyAccess=all attributes it)');
  const fields = (ready.message ?? '').split('\n');
  t.ok(fields.includes('READY=1'), `READY=1 in ${JSON.stringify(ready.message)}`);
  t.ok(fields.includes(`MAINPID=${daemon.child.pid}`), 'MAINPID names the daemon');
  t.ok(fields.includes('STATUS=serving'), 'a status for systemctl status');

  // Ready means serving: both listeners answer now.
  t.match(await ctl(d, { cmd: 'list' }), {}, 'the control socket answers');
  const nbd = net.connect(nbdPort(daemon), '127.0.0.1');
  await new Promise<void>((resolve, reject) => nbd.once('connect', resolve).once('error', reject));
  const greeting = await new Promise<Buffer>((resolve) => nbd.once('data', resolve));
  t.equal(greeting.subarray(0, 8).toString('latin1'), 'NBDMAGIC', 'the NBD listener greets');
  nbd.destroy();
  t.equal(await daemon.stop(), 0);
});
