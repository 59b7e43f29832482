#!/usr/bin/env node
'use strict';
// libuv's thread pool runs every image write and uncached read. Its default of
// 4 threads caps the writes in flight at 4 while the kernel throttles writers
// during writeback; 16 keeps up with a QD16 client (1 MiB writes 0.36 → 0.47×
// nbdkit in docs/benchmarks.md). Read when the pool first starts, so set here.
process.env.UV_THREADPOOL_SIZE ??= '16';
// Before the heap grows: see src/util/heap-growth.ts.
require('../build/src/util/heap-growth.js').keepHeapsSmall();
require('../build/src/cli/main.js').main(process.argv);
