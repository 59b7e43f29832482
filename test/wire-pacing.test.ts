/**
 * A destination asks its source to pace the session's background batches
 * (PACE): the source offers it in WELCOME, takes the rate for every
 * connection of the session, and shows it in its status.
 */
import t from 'tap';
import crypto from 'node:crypto';
import { formatSourceStatus } from '../src/control/source-status-text';
import { encodeFrameHead } from '../src/wire/frame-codec';
import { decodeRefuse } from '../src/wire/messages';
import { MessageType, RefuseCode, WelcomeFlag } from '../src/wire/protocol';
import { connectWirePeer, helloFields } from './helpers/wire-peer';
import { startWireSession } from './helpers/wire-source';

const BS = 4096;

t.test('the pace a destination asks is the session’s at the source', async (t) => {
  const image = crypto.randomBytes(64 * BS);
  const { source, upstream } = await startWireSession(t, image, BS, 'ferry-pace-');
  t.equal(source.status().sessions[0].pacedBytesPerSecond, 0, 'unpaced until asked');
  upstream.setPacingRate(2_500_000);
  // The fetch goes on the stream the PACE went on, after it: its answer means the PACE was taken.
  t.same(await upstream.fetch(0, 16 * BS, 'background'), image.subarray(0, 16 * BS));
  t.equal(source.status().sessions[0].pacedBytesPerSecond, 2_500_000, 'paced as asked');
  t.match(formatSourceStatus(source.status()), /background paced at 20\.0 Mbit\/s/, 'and `ferry ctl status` says so');
  upstream.setPacingRate(0);
  t.same(await upstream.fetch(16 * BS, 16 * BS, 'background'), image.subarray(16 * BS, 32 * BS));
  t.equal(source.status().sessions[0].pacedBytesPerSecond, 0, 'and unpaced again');
  t.notMatch(formatSourceStatus(source.status()), /paced/);
});

t.test('a source offers pacing in WELCOME; a malformed PACE is refused with the reason', async (t) => {
  const { source } = await startWireSession(t, crypto.randomBytes(16 * BS), BS, 'ferry-pace-peer-');
  const peer = await connectWirePeer(source.port, helloFields({ role: 1 }));
  t.teardown(() => peer.socket.destroy());
  const welcome = await peer.frame(MessageType.Welcome);
  t.ok(welcome && welcome.flags & WelcomeFlag.Pacing, 'the Pacing bit is set');
  peer.socket.write(encodeFrameHead(MessageType.Pace, 0, Buffer.alloc(3)));
  const refuse = await peer.frame(MessageType.Refuse);
  const reason = refuse && decodeRefuse(refuse.meta);
  t.match(reason, { code: RefuseCode.BadRequest, reason: 'malformed PACE' });
});
