/**
 * ferryd.toml: the sample shipped in packaging/ names every key with its
 * default, and a bad key or value is refused naming it.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { loadDaemonConfig } from '../src/config/load';
import { DaemonConfigSchema, DaemonSection, DiskSpec, MigrationSpec } from '../src/config/daemon-schema';
import { CopySection, LogSection, NbdSection, WireSection } from '../src/config/schema';
import { tempDir } from './helpers/temp-dir';

const SAMPLE = path.resolve(__dirname, '..', '..', 'packaging', 'ferryd.toml');

t.test('the sample ferryd.toml is every default, and names every key', async (t) => {
  t.same(loadDaemonConfig(SAMPLE), DaemonConfigSchema.parse({}), 'every value shown is the default');
  const text = fs.readFileSync(SAMPLE, 'utf8');
  const sections = { DaemonSection, NbdSection, CopySection, WireSection, LogSection, MigrationSpec, DiskSpec };
  for (const [section, schema] of Object.entries(sections))
    for (const key of Object.keys(schema.shape))
      t.match(
        text,
        // `disk` is the [[migration.disk]] table of each migration.
        key === 'disk' ? /^# \[\[migration\.disk\]\]$/m : new RegExp(`^(# )?(# )?${key} = `, 'm'),
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
});
