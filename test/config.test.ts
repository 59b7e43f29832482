import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, ConfigError } from '../src/config/load';

function file(t: Test, text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-cfg-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'ferry.toml');
  fs.writeFileSync(p, text);
  return p;
}

t.test('defaults, file values and flag overrides', async (t) => {
  const c = loadConfig(undefined);
  t.equal(c.serve.listen, '127.0.0.1:10809');
  t.equal(c.dest.block_size, 4096);
  t.equal(c.source.codec, 'auto');
  const p = file(t, '[serve]\nimage = "a.img"\nlisten = "0.0.0.0:1"\n[copy]\nbatch_blocks = 32\n');
  const d = loadConfig(p, { 'serve.listen': '127.0.0.1:2', 'serve.read_only': true, 'serve.export': undefined });
  t.equal(d.serve.image, 'a.img');
  t.equal(d.serve.listen, '127.0.0.1:2', 'the flag wins');
  t.equal(d.serve.read_only, true);
  t.equal(d.copy.batch_blocks, 32);
});

t.test('an unknown key or a bad value names the key and the value', async (t) => {
  const unknown = file(t, '[dest]\nsourec = "x"\n');
  t.throws(() => loadConfig(unknown), { name: 'ConfigError', message: /unknown key dest\.sourec/ });
  t.throws(() => loadConfig(file(t, '[nope]\n')), /unknown key nope/);
  t.throws(
    () => loadConfig(file(t, '[copy]\nbatch_blocks = 100\n')),
    /copy\.batch_blocks must be a power of two between 1 and 1024 \(got 100\)/,
  );
  t.throws(
    () => loadConfig(file(t, '[serve]\nlisten = "nowhere"\n')),
    /serve\.listen must be HOST:PORT \(got "nowhere"\)/,
  );
  t.throws(() => loadConfig(file(t, '[log]\nlevel = "loud"\n')), /log\.level/);
  t.throws(() => loadConfig(undefined, { 'dest.block_size': 3000 }), /dest\.block_size/);
  t.throws(() => loadConfig(file(t, 'this is not toml')), /is not valid TOML/);
  t.throws(() => loadConfig('/nonexistent/ferry.toml'), /cannot read \/nonexistent\/ferry\.toml/);
  const e = (() => {
    try {
      loadConfig(file(t, '[source]\ncodec = "zstd"\n'));
    } catch (err) {
      return err;
    }
  })();
  t.ok(e instanceof ConfigError);
  t.match((e as Error).message, /source\.codec/);
});

t.test('stall timeouts and control socket limits: defaults, values, bad values', async (t) => {
  const c = loadConfig(undefined);
  t.equal(c.dest.wire_stall_timeout_ms, 20_000);
  t.equal(c.dest.nbd_stall_timeout_ms, 30_000);
  t.equal(c.dest.control_max_connections, 32);
  t.equal(c.dest.control_idle_timeout_ms, 300_000);
  t.equal(c.source.control_max_connections, 32);
  t.equal(c.source.control_idle_timeout_ms, 300_000);
  const d = loadConfig(
    file(
      t,
      '[dest]\nwire_stall_timeout_ms = 500\nnbd_stall_timeout_ms = 700\ncontrol_max_connections = 2\ncontrol_idle_timeout_ms = 1000\n',
    ),
  );
  t.same([d.dest.wire_stall_timeout_ms, d.dest.nbd_stall_timeout_ms, d.dest.control_max_connections], [500, 700, 2]);
  t.equal(d.dest.control_idle_timeout_ms, 1000);
  t.throws(() => loadConfig(file(t, '[dest]\nwire_stall_timeout_ms = 0\n')), /dest\.wire_stall_timeout_ms/);
  t.throws(() => loadConfig(file(t, '[source]\ncontrol_max_connections = 0\n')), /source\.control_max_connections/);
});
