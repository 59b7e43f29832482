/**
 * Image locks: exclusive against everything, shared against exclusive, the
 * holder named in the refusal, and a holder killed with -9 blocks no one —
 * with flock through the addon and with the pid-file fallback.
 */
import t, { Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileOps } from '../src/store/fileops';
import { ImageLockedError, lockImage, lockImages, type LockBackend } from '../src/store/image-lock';
import { tempDir } from './helpers/temp-dir';

const LOCK_MODULE = path.resolve(__dirname, '..', 'src', 'store', 'image-lock.js');

const backends: Array<[string, LockBackend | null]> = [
  ['flock', fileOps ? { kind: 'flock', ops: fileOps } : null],
  ['pid-file', { kind: 'pid-file' }],
];

function refusedBy(t: Test, fn: () => unknown, pid: number): void {
  try {
    fn();
    t.fail('the lock was granted');
  } catch (e) {
    t.ok(e instanceof ImageLockedError, 'an ImageLockedError');
    t.match((e as Error).message, new RegExp(`in use by pid ${pid}\\b`), 'names the holder');
    t.same((e as ImageLockedError).holders, [pid]);
  }
}

/** A child process that takes the lock and reports when it has it. */
async function lockingChild(t: Test, file: string, backend: LockBackend['kind']) {
  const script = `const m = require(${JSON.stringify(LOCK_MODULE)});
    m.lockImage(${JSON.stringify(file)}, 'exclusive', ${backend === 'flock' ? 'm.defaultLockBackend' : "{ kind: 'pid-file' }"});
    process.stdout.write('locked\\n');
    setInterval(() => {}, 60000);`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  t.teardown(() => {
    child.kill('SIGKILL');
    return exited;
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (b: Buffer) => b.toString().includes('locked') && resolve());
    child.on('exit', (code) => reject(new Error(`locking child exited with ${code}`)));
  });
  return { child, exited };
}

for (const [name, backend] of backends) {
  t.test(`${name} locks`, { skip: backend ? false : 'the fileops addon is not built' }, async (t) => {
    const dir = tempDir(t);
    const image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, Buffer.alloc(4096));

    t.test('exclusive excludes exclusive and shared, until released', async (t) => {
      const release = lockImage(image, 'exclusive', backend!);
      refusedBy(t, () => lockImage(image, 'exclusive', backend!), process.pid);
      refusedBy(t, () => lockImage(image, 'shared', backend!), process.pid);
      release();
      release(); // twice is harmless
      lockImage(image, 'exclusive', backend!)();
    });

    if (backend!.kind === 'flock') {
      t.test('shared locks share, and exclude an exclusive one', async (t) => {
        const a = lockImage(image, 'shared', backend!);
        const b = lockImage(image, 'shared', backend!);
        try {
          lockImage(image, 'exclusive', backend!);
          t.fail('exclusive granted over shared holders');
        } catch (e) {
          t.match((e as Error).message, /holds a shared lock/);
        }
        a();
        b();
        lockImage(image, 'exclusive', backend!)();
      });
    } else {
      t.test('a pid file is left by no one after release', async (t) => {
        lockImage(image, 'exclusive', backend!)();
        t.notOk(fs.existsSync(`${image}.ferry-lock`));
        t.same(
          fs.readdirSync(dir).filter((f) => f !== 'disk.img'),
          [],
          'no temporary files either',
        );
      });
    }

    t.test('lockImages releases what it took when a later path is refused', async (t) => {
      const state = path.join(dir, 'disk.state');
      fs.writeFileSync(state, '');
      const held = lockImage(state, 'exclusive', backend!);
      t.throws(() => lockImages([image, state], 'exclusive', backend!), ImageLockedError);
      lockImage(image, 'exclusive', backend!)(); // the image lock was given back
      held();
    });

    t.test('a holder in another process is named, and its kill -9 frees the image', async (t) => {
      const { child, exited } = await lockingChild(t, image, backend!.kind);
      refusedBy(t, () => lockImage(image, 'exclusive', backend!), child.pid!);
      child.kill('SIGKILL');
      await exited;
      const release = lockImage(image, 'exclusive', backend!);
      release();
    });
  });
}

t.test('locking a file that does not exist says so', async (t) => {
  const dir = tempDir(t);
  for (const [, backend] of backends) {
    if (backend?.kind !== 'flock') continue;
    t.throws(() => lockImage(path.join(dir, 'missing.img'), 'exclusive', backend), /cannot lock .*missing\.img/);
  }
});
