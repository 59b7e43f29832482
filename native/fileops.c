// Linux file and socket operations that Node lacks: punching holes, zeroing
// ranges without writing, finding data/hole boundaries, flock(2), the size
// of a block device (which fstat reports as 0), a socket's receive low-water mark.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <node_api.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, text, error;
  const char *name = err == ENOSPC ? "ENOSPC" : err == EOPNOTSUPP ? "ENOTSUP" : err == EIO ? "EIO" : "EOTHER";
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_value errnoValue;
  napi_create_int32(env, err, &errnoValue);
  napi_set_named_property(env, error, "errno", errnoValue);
  napi_set_named_property(env, error, "code", code);
  napi_throw(env, error);
  return NULL;
}

static int read_args(napi_env env, napi_callback_info info, size_t want, int64_t *out) {
  napi_value argv[3];
  size_t argc = 3;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < want) {
    napi_throw_type_error(env, NULL, "fileops: missing arguments");
    return -1;
  }
  for (size_t i = 0; i < want; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "fileops: arguments must be numbers");
      return -1;
    }
  }
  return 0;
}

static napi_value fallocate_mode(napi_env env, napi_callback_info info, int mode, const char *what) {
  int64_t a[3];
  if (read_args(env, info, 3, a)) return NULL;
  if (fallocate((int)a[0], mode, (off_t)a[1], (off_t)a[2]) != 0) return throw_errno(env, what, errno);
  return NULL;
}

// punchHole(fd, offset, length): deallocate; reads return zeros.
static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return fallocate_mode(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fallocate(PUNCH_HOLE)");
}

// zeroRange(fd, offset, length): zeros that stay allocated.
static napi_value zero_range(napi_env env, napi_callback_info info) {
  return fallocate_mode(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "fallocate(ZERO_RANGE)");
}

// punchHoleAsync / zeroRangeAsync(fd, offset, length, callback): the same in a thread-pool
// task; then callback(errno, 0 = done). fallocate can wait for the file system's journal,
// which must not hold the event loop.
typedef struct {
  napi_async_work work;
  napi_ref callback;
  int fd;
  int mode;
  off_t offset;
  off_t length;
  int error;
} fallocate_task;

static void fallocate_execute(napi_env env, void *data) {
  (void)env;
  fallocate_task *f = data;
  int r;
  do r = fallocate(f->fd, f->mode, f->offset, f->length);
  while (r != 0 && errno == EINTR);
  f->error = r == 0 ? 0 : errno;
}

static void fallocate_complete(napi_env env, napi_status status, void *data) {
  fallocate_task *f = data;
  napi_value callback, global, value;
  napi_create_int32(env, status == napi_ok ? f->error : ECANCELED, &value);
  napi_get_reference_value(env, f->callback, &callback);
  napi_get_global(env, &global);
  napi_delete_reference(env, f->callback);
  napi_delete_async_work(env, f->work);
  free(f);
  napi_call_function(env, global, callback, 1, &value, NULL);
}

static napi_value fallocate_start(napi_env env, napi_callback_info info, int mode, const char *name) {
  napi_value argv[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t a[3];
  napi_valuetype callbackType = napi_undefined;
  if (argc == 4) napi_typeof(env, argv[3], &callbackType);
  if (argc != 4 || callbackType != napi_function || napi_get_value_int64(env, argv[0], &a[0]) != napi_ok ||
      napi_get_value_int64(env, argv[1], &a[1]) != napi_ok || napi_get_value_int64(env, argv[2], &a[2]) != napi_ok ||
      a[1] < 0 || a[2] <= 0) {
    napi_throw_type_error(env, NULL, "fallocate task: (fd, offset, length > 0, callback)");
    return NULL;
  }
  fallocate_task *f = calloc(1, sizeof *f);
  if (!f) return throw_errno(env, name, ENOMEM);
  f->fd = (int)a[0];
  f->mode = mode;
  f->offset = (off_t)a[1];
  f->length = (off_t)a[2];
  napi_value resource;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  napi_create_reference(env, argv[3], 1, &f->callback);
  napi_create_async_work(env, NULL, resource, fallocate_execute, fallocate_complete, f, &f->work);
  napi_queue_async_work(env, f->work);
  return NULL;
}

static napi_value punch_hole_async(napi_env env, napi_callback_info info) {
  return fallocate_start(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "ferry.punchHole");
}

static napi_value zero_range_async(napi_env env, napi_callback_info info) {
  return fallocate_start(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "ferry.zeroRange");
}

// seek(fd, offset, whence): SEEK_DATA (3) / SEEK_HOLE (4); -1 when past the last data.
static napi_value seek(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (read_args(env, info, 3, a)) return NULL;
  off_t r = lseek((int)a[0], (off_t)a[1], (int)a[2]);
  if (r < 0 && errno != ENXIO) return throw_errno(env, "lseek", errno);
  napi_value result;
  napi_create_int64(env, r < 0 ? -1 : (int64_t)r, &result);
  return result;
}

// One page-cache-only transfer (RWF_NOWAIT) of (fd, buffer, position): what
// preadNoWait and pwriteNoWait share. Returns the bytes moved, -1 when it
// would block, and for a write -2 when the file system cannot do it.
static napi_value io_nowait(napi_env env, napi_callback_info info, int writing) {
  const char *usage = writing ? "pwriteNoWait(fd, buffer, position)" : "preadNoWait(fd, buffer, position)";
  napi_value argv[3];
  size_t argc = 3;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data;
  size_t length;
  int64_t fd, position;
  if (argc < 3 || napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok ||
      napi_get_value_int64(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[2], &position) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  struct iovec iov = {data, length};
  ssize_t n = writing ? pwritev2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT)
                      : preadv2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  int err = errno;
  if (n < 0 && err != EAGAIN && err != EOPNOTSUPP && err != EINTR)
    return throw_errno(env, writing ? "pwritev2" : "preadv2", err);
  napi_value result;
  napi_create_int64(env, n >= 0 ? (int64_t)n : writing && err == EOPNOTSUPP ? -2 : -1, &result);
  return result;
}

// preadNoWait(fd, buffer, position): reads only what the page cache holds
// (RWF_NOWAIT), so a cached read costs no thread-pool round trip. Returns
// the bytes read, or -1 when the data is not cached and the caller must read
// the ordinary way.
static napi_value pread_nowait(napi_env env, napi_callback_info info) { return io_nowait(env, info, 0); }

// pwriteNoWait(fd, buffer, position): writes into the page cache only when
// that needs no waiting (RWF_NOWAIT: no page to read in, no dirty-page
// throttling, no lock held elsewhere), so a buffered write costs no
// thread-pool round trip. Returns the bytes written (possibly short), or -1
// when it would block, or -2 when the file system cannot (ext4 takes
// RWF_NOWAIT only for direct I/O): the caller then writes the ordinary way.
static napi_value pwrite_nowait(napi_env env, napi_callback_info info) { return io_nowait(env, info, 1); }

// writeBatch(fd, buffers, positions, callback): every buffer written at its
// position by one thread-pool task, then callback(errors) with one errno per
// buffer (0 = written). Handing a thread one task per write costs a wake-up
// (an inter-processor interrupt) each way, which on a virtual machine
// outweighs a 4 KiB write itself; a batch pays it once.
typedef struct {
  void *data;
  size_t length;
  off_t position;
  int error;
} write_item;

typedef struct {
  napi_async_work work;
  napi_ref buffers; // keeps the buffers alive while the pool writes them
  napi_ref callback;
  int fd;
  uint32_t count;
  write_item items[];
} write_batch;

static void write_batch_execute(napi_env env, void *data) {
  (void)env;
  write_batch *b = data;
  for (uint32_t i = 0; i < b->count; i++) {
    write_item *it = &b->items[i];
    size_t done = 0;
    while (done < it->length) {
      ssize_t n = pwrite(b->fd, (char *)it->data + done, it->length - done, it->position + (off_t)done);
      if (n < 0) {
        if (errno == EINTR) continue;
        it->error = errno;
        break;
      }
      if (n == 0) {
        it->error = EIO;
        break;
      }
      done += (size_t)n;
    }
  }
}

static void write_batch_complete(napi_env env, napi_status status, void *data) {
  write_batch *b = data;
  napi_value errors, callback, global, value;
  napi_create_array_with_length(env, b->count, &errors);
  for (uint32_t i = 0; i < b->count; i++) {
    napi_create_int32(env, status == napi_ok ? b->items[i].error : ECANCELED, &value);
    napi_set_element(env, errors, i, value);
  }
  napi_get_reference_value(env, b->callback, &callback);
  napi_get_global(env, &global);
  napi_delete_reference(env, b->callback);
  napi_delete_reference(env, b->buffers);
  napi_delete_async_work(env, b->work);
  free(b);
  napi_call_function(env, global, callback, 1, &errors, NULL);
}

static napi_value write_batch_start(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd;
  uint32_t count, positionCount;
  bool isArray = false, isArray2 = false;
  napi_valuetype callbackType = napi_undefined;
  if (argc == 4) {
    napi_is_array(env, argv[1], &isArray);
    napi_is_array(env, argv[2], &isArray2);
    napi_typeof(env, argv[3], &callbackType);
  }
  if (!isArray || !isArray2 || callbackType != napi_function || napi_get_value_int64(env, argv[0], &fd) != napi_ok ||
      napi_get_array_length(env, argv[1], &count) != napi_ok ||
      napi_get_array_length(env, argv[2], &positionCount) != napi_ok || count != positionCount || count == 0) {
    napi_throw_type_error(env, NULL, "writeBatch(fd, buffers, positions, callback)");
    return NULL;
  }
  write_batch *b = calloc(1, sizeof *b + count * sizeof(write_item));
  if (!b) return throw_errno(env, "writeBatch", ENOMEM);
  b->fd = (int)fd;
  b->count = count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value buffer, position;
    int64_t at;
    napi_get_element(env, argv[1], i, &buffer);
    napi_get_element(env, argv[2], i, &position);
    if (napi_get_buffer_info(env, buffer, &b->items[i].data, &b->items[i].length) != napi_ok ||
        napi_get_value_int64(env, position, &at) != napi_ok || at < 0) {
      free(b);
      napi_throw_type_error(env, NULL, "writeBatch: buffers must be Buffers, positions non-negative numbers");
      return NULL;
    }
    b->items[i].position = (off_t)at;
  }
  napi_value name;
  napi_create_string_utf8(env, "ferry.writeBatch", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[1], 1, &b->buffers);
  napi_create_reference(env, argv[3], 1, &b->callback);
  napi_create_async_work(env, NULL, name, write_batch_execute, write_batch_complete, b, &b->work);
  napi_queue_async_work(env, b->work);
  return NULL;
}

// tryLock(fd, exclusive): flock(2) without waiting; true when taken, false
// when another open file holds a conflicting lock. The kernel drops the lock
// when the last descriptor of this open file closes, kill -9 included.
static napi_value try_lock(napi_env env, napi_callback_info info) {
  int64_t a[2];
  if (read_args(env, info, 2, a)) return NULL;
  int op = (a[1] ? LOCK_EX : LOCK_SH) | LOCK_NB;
  int r;
  do r = flock((int)a[0], op);
  while (r != 0 && errno == EINTR);
  if (r != 0 && errno != EWOULDBLOCK) return throw_errno(env, "flock", errno);
  napi_value result;
  napi_get_boolean(env, r == 0, &result);
  return result;
}

// blockDeviceGeometry(fd): { size, logicalBlockSize } of a block device
// (BLKGETSIZE64, BLKSSZGET).
static napi_value block_device_geometry(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (read_args(env, info, 1, a)) return NULL;
  uint64_t size;
  int sector;
  if (ioctl((int)a[0], BLKGETSIZE64, &size) != 0) return throw_errno(env, "ioctl(BLKGETSIZE64)", errno);
  if (ioctl((int)a[0], BLKSSZGET, &sector) != 0) return throw_errno(env, "ioctl(BLKSSZGET)", errno);
  napi_value result, sizeValue, sectorValue;
  napi_create_object(env, &result);
  napi_create_int64(env, (int64_t)size, &sizeValue);
  napi_create_int32(env, sector, &sectorValue);
  napi_set_named_property(env, result, "size", sizeValue);
  napi_set_named_property(env, result, "logicalBlockSize", sectorValue);
  return result;
}

// setReceiveLowWater(fd, bytes): SO_RCVLOWAT. A TCP socket then reports
// readable only once that many bytes are queued (or the peer closed), so a
// large payload is read in one wake-up instead of one per burst that arrives.
static napi_value set_receive_low_water(napi_env env, napi_callback_info info) {
  int64_t a[2];
  if (read_args(env, info, 2, a)) return NULL;
  int value = a[1] < 1 ? 1 : a[1] > 0x7fffffff ? 0x7fffffff : (int)a[1];
  if (setsockopt((int)a[0], SOL_SOCKET, SO_RCVLOWAT, &value, sizeof value) != 0)
    return throw_errno(env, "setsockopt(SO_RCVLOWAT)", errno);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default, NULL},
      {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_default, NULL},
      {"punchHoleAsync", NULL, punch_hole_async, NULL, NULL, NULL, napi_default, NULL},
      {"zeroRangeAsync", NULL, zero_range_async, NULL, NULL, NULL, napi_default, NULL},
      {"seek", NULL, seek, NULL, NULL, NULL, napi_default, NULL},
      {"preadNoWait", NULL, pread_nowait, NULL, NULL, NULL, napi_default, NULL},
      {"pwriteNoWait", NULL, pwrite_nowait, NULL, NULL, NULL, napi_default, NULL},
      {"writeBatch", NULL, write_batch_start, NULL, NULL, NULL, napi_default, NULL},
      {"tryLock", NULL, try_lock, NULL, NULL, NULL, napi_default, NULL},
      {"blockDeviceGeometry", NULL, block_device_geometry, NULL, NULL, NULL, napi_default, NULL},
      {"setReceiveLowWater", NULL, set_receive_low_water, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
