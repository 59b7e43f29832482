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
    () => loadConfig(file(t, '[dest]\nsourec = "x"\nimgae = "y"\nimage = "z"\n[wire]\nstreams = 2\n')),
    /^config: unknown key dest\.sourec, dest\.imgae \(in .*\)\nconfig: unknown key wire\.streams \(in .*\)$/,
    'every unknown key is named, each table on its own line',
  );
  t.throws(
    () => loadConfig(file(t, '[copy]\nbatch_blocks = 100\n')),
    /copy\.batch_blocks must be a power of two between 1 and 1024 \(got 100\)/,
  );
  t.throws(
    () => loadConfig(file(t, '[serve]\nlisten = "nowhere"\n')),
    /serve\.listen must be HOST:PORT \(got "nowhere"\)/,
  );
  t.throws(
    () => loadConfig(file(t, '[log]\nlevel = "loud"\n')),
    /log\.level must be one of "fatal", "error", "warn", "info", "debug", "trace", "silent" \(got "loud"\)/,
  );
  // What each key must be, in words, after the key and before the value given.
  const refusals: Array<[string, RegExp]> = [
    ['[nbd]\nmax_in_flight_requests = 0\n', /nbd\.max_in_flight_requests must be greater than 0 \(got 0\)/],
    ['[nbd]\nmax_in_flight_requests = 5000\n', /nbd\.max_in_flight_requests must be at most 4096 \(got 5000\)/],
    ['[nbd]\nmax_in_flight_requests = 1.5\n', /nbd\.max_in_flight_requests must be an integer \(got 1\.5\)/],
    ['[nbd]\nidle_timeout_ms = "1s"\n', /nbd\.idle_timeout_ms must be a number \(got "1s"\)/],
    ['[copy]\nrate_limit = 1e300\n', /copy\.rate_limit must be an integer from -9007199254740991 to 9007199254740991/],
    ['[copy]\nqueue_batches = inf\n', /copy\.queue_batches must be at most 16/],
    ['[wire]\nworkers_nice = 20\n', /wire\.workers_nice must be at most 19 \(got 20\)/],
    ['[source]\nworkers_nice = -1\n', /source\.workers_nice must be at least 0 \(got -1\)/],
    ['[serve]\nread_only = "yes"\n', /serve\.read_only must be true or false \(got "yes"\)/],
    ['[dest]\nexport = ""\n', /dest\.export must not be empty \(got ""\)/],
    ['[dest]\ncontrol_group = "' + 'g'.repeat(256) + '"\n', /dest\.control_group must have at most 255 characters/],
    ['[dest]\nmetrics = "99999"\n', /dest\.metrics port must be at most 65535 \(got "99999"\)/],
    ['[dest]\nmetrics = "nowhere"\n', /dest\.metrics must be HOST:PORT or PORT \(got "nowhere"\)/],
    ['[dest]\nfile_mode = "0666"\n', /dest\.file_mode must not let others write the image \(got "0666"\)/],
    ['dest = 5\n', /config: dest must be an object \(got 5\)/],
    ['dest = []\n', /config: dest must be a table, not an array/],
    ['copy = [1]\n', /config: copy must be a table, not an array/],
  ];
  for (const [text, message] of refusals) t.throws(() => loadConfig(file(t, text)), message, text.trim());
  t.equal(loadConfig(undefined, { 'dest.metrics': '9100' }).dest.metrics, '127.0.0.1:9100', 'a bare port is local');
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
