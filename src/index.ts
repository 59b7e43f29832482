/**
 * ferry as a library: the kernels as plain functions, the block device layers
 * and the NBD server and client, for tools that embed them.
 */
export * from './kernels/index';
export type { BlockDevice, Extent, ZeroOptions, BlockSizeHint } from './store/block-device';
export { BlockDeviceError } from './store/block-device';
export { FileDevice } from './store/file-device';
export { BlockMap } from './store/block-map';
export { NbdServer, StaticExportTable } from './nbd/server';
export { NbdClient, NbdError } from './nbd/client';
export { CodecPool } from './pool';
