// AssemblyScript entry of the test kernels (build/test/kernels.wasm): the
// product kernels plus a hook that moves the LZ4 hash table epoch, so a test
// can reach the wrap-around without 2^32 calls. Built by `npm run build:kernels`.
export * from '../../assembly/index';
export { lz4SetEpoch } from '../../assembly/lz4';
