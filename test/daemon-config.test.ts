/**
 * ferryd.toml: the sample shipped in packaging/ names every key with its
 * default, and a bad key or value is refused naming it.
 */
import t from 'tap';
import * as v from 'valibot';
import fs from 'node:fs';
import path from 'node:path';
import { loadDaemonConfig } from '../src/config/load';
import {
  DaemonConfigSchema,
  DaemonSection,
  DaemonSourceSection,
  DiskSpec,
  MigrationSpec,
  SourceExportSpec,
} from '../src/config/daemon-schema';
import { CopySection, LogSection, NbdSection, WireSection } from '../src/config/schema';
import { tempDir } from './helpers/temp-dir';

const SAMPLE = path.resolve(__dirname, '..', '..', 'packaging', 'ferryd.toml');

t.test('the sample ferryd.toml is every default, and names every key', async (t) => {
  t.same(loadDaemonConfig(SAMPLE), v.parse(DaemonConfigSchema, {}), 'every value shown is the default');
  const text = fs.readFileSync(SAMPLE, 'utf8');
  const sections = {
    DaemonSection,
    NbdSection,
    CopySection,
    WireSection,
    LogSection,
    MigrationSpec,
    DiskSpec,
    DaemonSourceSection,
    SourceExportSpec,
  };
  for (const [section, schema] of Object.entries(sections))
    for (const key of Object.keys(schema.entries))
      t.match(
        text,
        // `disk` and `export` are the [[migration.disk]] and [[source.export]] tables.
        key === 'disk'
          ? /^# \[\[migration\.disk\]\]$/m
          : key === 'export' && section === 'DaemonSourceSection'
            ? /^# \[\[source\.export\]\]$/m
            : new RegExp(`^(# )?(# )?${key} = `, 'm'),
        `${section}: ${key} is in the sample`,
      );
});

t.test('declared migrations: checked like the rest, errors name the key', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'ferryd.toml');
  const disk = (name: string, image: string): string =>
    `[[migration.disk]]\nname = "${name}"\nsource = "nbd://h:1/x"\nimage = "${image}"\n`;
  fs.writeFileSync(file, `[[migration]]\nname = "vm1"\nrate = 1000\n${disk('vda', '/i/a')}${disk('vdb', '/i/b')}`);
  const config = loadDaemonConfig(file);
  t.same(
    config.migration.map((m) => [m.name, m.rate, m.weight, m.disk.map((d) => d.name)]),
    [['vm1', 1000, 1, ['vda', 'vdb']]],
  );
  fs.writeFileSync(file, `[[migration]]\nname = "vm1"\n${disk('vda', '/i/a')}${disk('vda', '/i/b')}`);
  t.throws(() => loadDaemonConfig(file), /config: migration\.0\.disk\.1\.name repeats "vda"/);
  fs.writeFileSync(file, `[daemon]\nmax_rate = -1\n`);
  t.throws(() => loadDaemonConfig(file), /config: daemon\.max_rate .*\(got -1\)/);
  fs.writeFileSync(file, `[[migration]]\nname = "vm1"\nbogus = 1\n${disk('vda', '/i/a')}`);
  t.throws(() => loadDaemonConfig(file), /unknown key migration\.0\.bogus/);
  fs.writeFileSync(file, `daemon = []\nmigration = [[]]\n`);
  t.throws(
    () => loadDaemonConfig(file),
    /^config: daemon must be a table, not an array .*\nconfig: migration\.0 must be a table, not an array /,
    'an array where a table belongs is refused, however empty',
  );
});

t.test('source exports: checked like the rest, errors name the key', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'ferryd.toml');
  const exp = (name: string, image: string, more = ''): string =>
    `[[source.export]]\nname = "${name}"\nimage = "${image}"\n${more}`;
  const listen = `[source]\nlisten = "127.0.0.1:10810"\ninsecure = true\n`;
  const write = (text: string): void => fs.writeFileSync(file, text);

  write(`${listen}${exp('web1-vda', '/i/a')}${exp('web1-vdb', '/i/b', 'writes = "tracked"\n')}`);
  const config = loadDaemonConfig(file);
  t.same(
    config.source.export.map((e) => [e.name, e.image, e.writes]),
    [
      ['web1-vda', '/i/a', 'read-only'],
      ['web1-vdb', '/i/b', 'tracked'],
    ],
    'read-only unless said otherwise',
  );
  t.equal(config.source.max_connections, 64, "ferry source's defaults");
  t.equal(config.source.handshake_timeout_ms, 10_000);
  t.equal(config.source.codec, 'auto');

  write(`${listen}${exp('a', '/i/a')}${exp('a', '/i/b')}`);
  t.throws(() => loadDaemonConfig(file), /config: source\.export\.1\.name "a" is source export 0's name already/);
  write(`${listen}${exp('a', '/i/a')}${exp('b', '/i/../i/a')}`);
  t.throws(() => loadDaemonConfig(file), /config: source\.export\.1\.image \/i\/\.\.\/i\/a is source export a's image/);
  write(`${exp('a', '/i/a')}`);
  t.throws(() => loadDaemonConfig(file), /config: source\.listen is needed to serve the source exports/);
  write(`${listen}${exp('a', '/i/a', 'writes = "rw"\n')}`);
  t.throws(() => loadDaemonConfig(file), /config: source\.export\.0\.writes .*\(got "rw"\)/);
  write(`${listen}${exp('a', '/i/a', 'bogus = 1\n')}`);
  t.throws(() => loadDaemonConfig(file), /unknown key source\.export\.0\.bogus/);
  write(`${listen}bogus = 1\n`);
  t.throws(() => loadDaemonConfig(file), /unknown key source\.bogus/);
  write(`[source]\nlisten = "nowhere"\n`);
  t.throws(() => loadDaemonConfig(file), /config: source\.listen must be HOST:PORT/);
  write(`${listen}max_connections = 0\n`);
  t.throws(() => loadDaemonConfig(file), /config: source\.max_connections .*\(got 0\)/);
  write(`${listen}${exp('-a', '/i/a')}`);
  t.throws(() => loadDaemonConfig(file), /config: source\.export\.0\.name must be 1-128 letters/);

  // One image, one owner: an image the daemon copies into is not also one it sources.
  const migration = `[[migration]]\nname = "vm1"\n[[migration.disk]]\nname = "vda"\nsource = "nbd://h:1/x"\nimage = "/i/a"\n`;
  write(`${listen}${exp('a', '/i/a')}${migration}`);
  t.throws(
    () => loadDaemonConfig(file),
    /config: source\.export\.0\.image \/i\/a is the image of migration vm1 disk vda already/,
  );
  write(`${listen}${exp('vm1/vda', '/i/b')}${migration}`);
  t.throws(
    () => loadDaemonConfig(file),
    /config: source\.export\.0\.name "vm1\/vda" is the NBD export of migration vm1 disk vda already/,
  );
});
