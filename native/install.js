#!/usr/bin/env node
// npm's install step for the optional native addon: builds native/build/Release/fileops.node
// with node-gyp. ferry runs without it (with reduced function), so a machine without a
// compiler gets a note of what is missing and a successful install, not a failed one.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = __dirname;

function onPath(command) {
  const dirs = (process.env.PATH || '').split(path.delimiter).filter(Boolean);
  return dirs.some((dir) => {
    try {
      fs.accessSync(path.join(dir, command), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** npm hands lifecycle scripts its bundled node-gyp; elsewhere try one on the PATH. */
function nodeGypCommand() {
  const bundled = process.env.npm_config_node_gyp;
  if (bundled) return [process.execPath, [bundled]];
  return ['node-gyp', []];
}

const [command, prefix] = nodeGypCommand();
const result = spawnSync(command, [...prefix, 'rebuild'], { cwd: here, stdio: 'inherit' });
if (result.status === 0) process.exit(0);

const missing = [
  ['python3', 'python3'],
  ['make', 'make'],
  ['cc', 'a C compiler (cc)'],
  ['c++', 'a C++ compiler (c++, node-gyp checks for one)'],
].flatMap(([tool, what]) => (onPath(tool) ? [] : [what]));
const why = result.error
  ? `node-gyp could not run: ${result.error.message}`
  : `node-gyp exited with ${result.signal ?? result.status}`;
console.warn(
  `ferry: the native addon (native/fileops.c) was not built: ${why}.\n` +
    (missing.length ? `ferry: missing: ${missing.join(', ')}.\n` : '') +
    'ferry: it still works without it: no TRIM, zeroing writes zeros, every range reads as data,\n' +
    'ferry: no non-blocking page-cache reads. Install the missing tools, then `npm run build:addon`.',
);
process.exit(0);
