/**
 * The native addon is used whole or not at all: one built from an older
 * source (a checkout updated without `npm run build:addon`) would fail every
 * write that needs a function it lacks.
 */
import t from 'tap';
import { fileOps, fileOpsError, fileOpsProblem } from '../src/store/fileops';

const fn = (): void => undefined;
const complete = {
  punchHole: fn,
  zeroRange: fn,
  punchHoleAsync: fn,
  zeroRangeAsync: fn,
  seek: fn,
  preadNoWait: fn,
  pwriteNoWait: fn,
  writeBatch: fn,
  tryLock: fn,
  blockDeviceGeometry: fn,
  setReceiveLowWater: fn,
};

t.test('an addon with every function is used', async (t) => {
  t.equal(fileOpsProblem(complete), null);
});

t.test('an addon that lacks functions is refused, naming them and the fix', async (t) => {
  const old: Partial<typeof complete> = { ...complete };
  delete old.pwriteNoWait;
  delete old.writeBatch;
  const problem = fileOpsProblem(old);
  t.match(problem, /older source \(it lacks pwriteNoWait, writeBatch\); npm run build:addon rebuilds it/);
  t.match(fileOpsProblem(null), /lacks punchHole/);
});

t.test('the addon this checkout loads is whole, or absent with the reason', async (t) => {
  if (fileOps) t.equal(fileOpsProblem(fileOps), null);
  else t.type(fileOpsError, 'string');
});
