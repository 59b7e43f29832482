#!/usr/bin/env node
'use strict';
// libuv's thread pool runs every image write and uncached read. Its default of
// 4 threads caps the writes in flight at 4 while the kernel throttles writers
// during writeback; 16 keeps up with a QD16 client (1 MiB writes 0.36 → 0.47×
// nbdkit in docs/benchmarks.md). Read when the pool first starts, so set here.
process.env.UV_THREADPOOL_SIZE ??= '16';
// V8 doubles the young generation (up to 2 × 16 MiB) whenever much of it
// survives a scavenge, which a stream of batches in flight always does; the
// space stays committed afterwards. Kept at its initial size, every isolate of
// the process (the pool's workers too) costs 10-30 MiB less at the same
// throughput (docs/benchmarks.md, "Memory"). Must be set before the heap grows.
require('node:v8').setFlagsFromString('--semi-space-growth-factor=1');
require('../build/src/cli/main.js').main(process.argv);
