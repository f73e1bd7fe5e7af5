/*
 * lcfs's binding to libfuse's low-level, inode-based API.
 *
 * The FUSE device is served from Node's own event loop: a uv_poll watches /dev/fuse, and each
 * request is read and handed to the JavaScript handler on the spot. JavaScript answers later,
 * when its store call completes, through the reply functions below, so many requests are in
 * flight at once. There is no second thread: a request costs one wake-up of the event loop
 * instead of two (device thread, then event loop), which on virtual machines is most of a
 * small operation's latency.
 *
 * The binding adds nothing to the requests: it passes the caller's uid, gid and umask, the open
 * flags, and setattr's exact to_set mask (so UTIME_NOW and UTIME_OMIT are told apart). From the
 * raw request it also passes the kill-setuid/setgid flag of writes and opens, which libfuse 3.14
 * drops, and it writes replies itself (libfuse's custom I/O) to amend the INIT reply: see ll_init.
 */
#define FUSE_USE_VERSION 35
#define NAPI_VERSION 8

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <node_api.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>
#include <uv.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/uio.h>
#include <unistd.h>

enum op {
  OP_ENDED = 0,
  OP_LOOKUP, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR,
  OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC,
  OP_OPENDIR, OP_READDIR, OP_RELEASEDIR, OP_FSYNCDIR, OP_STATFS, OP_SETXATTR, OP_GETXATTR,
  OP_LISTXATTR, OP_REMOVEXATTR, OP_CREATE, OP_READDIRPLUS,
};

/* Requests handled per wake-up before other events get their turn. */
#define BATCH 64

/* Kernel opcodes counted by requestStats (FUSE_STATX is 52; higher ones are not counted). */
#define OPCODES 64

/* A kernel cache entry to drop: a name (name != NULL), or a node's attributes and, unless
 * attributes_only, its pages. */
typedef struct {
  fuse_ino_t ino;
  char *name;
  int attributes_only;
} invalidation;


typedef struct {
  struct fuse_session *se;
  napi_env env;
  napi_ref handler;
  napi_async_context async;
  napi_ref resource;
  uv_poll_t poll;
  struct fuse_buf buf;
  int polling;
  int ended;
  /* Requests handed to JavaScript and not answered yet. */
  long pending;
  char *mountpoint;
  /* The raw request being processed, for the fields libfuse 3.14 does not pass on. */
  const struct fuse_in_header *in;
  uint64_t received_ns;
  /* The INIT request, whose reply send_reply amends (see ll_init). */
  uint64_t init_unique;
  uint32_t kernel_flags;
  /* Per kernel opcode: requests received, and nanoseconds from receipt to reply. */
  double op_count[OPCODES];
  double op_ns[OPCODES];
} session;

/* What JavaScript holds for a request: the request, and what the reply is timed against. */
typedef struct {
  fuse_req_t req;
  uint32_t opcode;
  uint64_t received_ns;
} pending_req;

typedef struct {
  session *s;
  invalidation *items;
  size_t count;
  napi_deferred deferred;
  napi_async_work work;
} invalidation_batch;

typedef struct {
  int op;
  fuse_req_t req;
  double ino, ino2;
  const char *name, *name2;
  const char *data; /* borrowed from libfuse's buffer: copied into a Buffer on delivery */
  size_t size;
  double off;
  double mode, rdev, flags, fh;
  /* write, open: the kernel asks the filesystem to clear setuid/setgid (see ll_init) */
  int kill_suidgid;
  uid_t uid;
  gid_t gid;
  pid_t pid;
  mode_t umask;
  /* setattr: the mask and the requested values */
  int to_set;
  double attr[9];
} request;

#define CHECK(call)                                                          \
  do {                                                                       \
    if ((call) != napi_ok) {                                                 \
      napi_throw_error(env, "LCFS_EFUSE_BINDING", "N-API call failed: " #call); \
      return NULL;                                                           \
    }                                                                        \
  } while (0)

static void deliver(void *s, request *r);

static void init_request(request *r, int op, fuse_req_t req, fuse_ino_t ino) {
  memset(r, 0, sizeof *r);
  r->op = op;
  r->req = req;
  r->ino = (double)ino;
  if (req) {
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    r->uid = ctx->uid;
    r->gid = ctx->gid;
    r->pid = ctx->pid;
    r->umask = ctx->umask;
  }
}

#define REQUEST(op, req, ino) \
  request r_;                 \
  request *r = &r_;           \
  init_request(r, op, req, ino)

static void post(fuse_req_t req, request *r) { deliver(fuse_req_userdata(req), r); }

/* Whether the raw write or open being processed asks the filesystem to clear setuid/setgid:
 * with FUSE_HANDLE_KILLPRIV_V2 the kernel sets this when the caller lacks CAP_FSETID. */
static int asks_kill_suidgid(fuse_req_t req) {
  const struct fuse_in_header *in = ((session *)fuse_req_userdata(req))->in;
  if (!in) return 0;
  if (in->opcode == FUSE_WRITE)
    return (((const struct fuse_write_in *)(in + 1))->write_flags & FUSE_WRITE_KILL_SUIDGID) != 0;
  if (in->opcode == FUSE_OPEN)
    return (((const struct fuse_open_in *)(in + 1))->open_flags & FUSE_OPEN_KILL_SUIDGID) != 0;
  return 0;
}

/* --- the operations: copy what the request carries, queue it ---------------------------- */

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  session *s = userdata;
  /* 1 MiB writes match the store's chunk size; O_TRUNC is handled in open. */
  conn->max_write = 1 << 20;
  conn->max_readahead = 1 << 20;
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  /* A symlink's target never changes: it is created with it. */
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  /*
   * We clear setuid/setgid and security.capability on write, truncate and chown ourselves
   * (FUSE_HANDLE_KILLPRIV_V2, added to the INIT reply by send_reply, since libfuse 3.14 predates
   * it). The kernel then stops asking for a file's attributes before every chown, and for its
   * security.capability before every write after the first. v1's looser contract stays off.
   */
  conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
  if (!(s->kernel_flags & FUSE_HANDLE_KILLPRIV_V2)) s->init_unique = 0;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  REQUEST(OP_LOOKUP, req, parent);
  r->name = name;
  post(req, r);
}

/* The store keeps every inode for its layer's lifetime, so lookup counts need no tracking. */
static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  (void)ino;
  (void)n;
  fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  (void)count;
  (void)forgets;
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  REQUEST(OP_GETATTR, req, ino);
  post(req, r);
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  REQUEST(OP_SETATTR, req, ino);
  r->to_set = to_set;
  r->fh = fi ? (double)fi->fh : -1;
  r->attr[0] = attr->st_mode;
  r->attr[1] = attr->st_uid;
  r->attr[2] = attr->st_gid;
  r->attr[3] = (double)attr->st_size;
  r->attr[4] = (double)attr->st_atim.tv_sec;
  r->attr[5] = (double)attr->st_atim.tv_nsec;
  r->attr[6] = (double)attr->st_mtim.tv_sec;
  r->attr[7] = (double)attr->st_mtim.tv_nsec;
  post(req, r);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) { REQUEST(OP_READLINK, req, ino);
  post(req, r); }

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  REQUEST(OP_MKNOD, req, parent);
  r->name = name;
  r->mode = mode;
  r->rdev = (double)rdev;
  post(req, r);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  REQUEST(OP_MKDIR, req, parent);
  r->name = name;
  r->mode = mode;
  post(req, r);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  REQUEST(OP_UNLINK, req, parent);
  r->name = name;
  post(req, r);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  REQUEST(OP_RMDIR, req, parent);
  r->name = name;
  post(req, r);
}

static void ll_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  REQUEST(OP_SYMLINK, req, parent);
  r->name = name;
  r->name2 = link;
  post(req, r);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
  REQUEST(OP_RENAME, req, parent);
  r->name = name;
  r->ino2 = (double)newparent;
  r->name2 = newname;
  r->flags = flags;
  post(req, r);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  REQUEST(OP_LINK, req, ino);
  r->ino2 = (double)newparent;
  r->name = newname;
  post(req, r);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  REQUEST(OP_OPEN, req, ino);
  r->flags = fi->flags;
  r->kill_suidgid = asks_kill_suidgid(req);
  post(req, r);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  REQUEST(OP_READ, req, ino);
  r->size = size;
  r->off = (double)off;
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
  REQUEST(OP_WRITE, req, ino);
  r->kill_suidgid = asks_kill_suidgid(req);
  r->data = buf;
  r->size = size;
  r->off = (double)off;
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  REQUEST(OP_FLUSH, req, ino);
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  REQUEST(OP_RELEASE, req, ino);
  r->fh = (double)fi->fh;
  r->flags = fi->flags;
  post(req, r);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  REQUEST(OP_FSYNC, req, ino);
  r->flags = datasync;
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  REQUEST(OP_OPENDIR, req, ino);
  r->flags = fi->flags;
  post(req, r);
}

static void ll_readdir_any(int op, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  REQUEST(op, req, ino);
  r->size = size;
  r->off = (double)off;
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  ll_readdir_any(OP_READDIR, req, ino, size, off, fi);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  ll_readdir_any(OP_READDIRPLUS, req, ino, size, off, fi);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  REQUEST(OP_RELEASEDIR, req, ino);
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  REQUEST(OP_FSYNCDIR, req, ino);
  r->flags = datasync;
  r->fh = (double)fi->fh;
  post(req, r);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) { REQUEST(OP_STATFS, req, ino);
  post(req, r); }

static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
  REQUEST(OP_SETXATTR, req, ino);
  r->name = name;
  r->data = value;
  r->size = size;
  r->flags = flags;
  post(req, r);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  REQUEST(OP_GETXATTR, req, ino);
  r->name = name;
  r->size = size;
  post(req, r);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  REQUEST(OP_LISTXATTR, req, ino);
  r->size = size;
  post(req, r);
}

static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  REQUEST(OP_REMOVEXATTR, req, ino);
  r->name = name;
  post(req, r);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  REQUEST(OP_CREATE, req, parent);
  r->name = name;
  r->mode = mode;
  r->flags = fi->flags;
  post(req, r);
}

static const struct fuse_lowlevel_ops ops = {
  .init = ll_init,
  .lookup = ll_lookup,
  .forget = ll_forget,
  .forget_multi = ll_forget_multi,
  .getattr = ll_getattr,
  .setattr = ll_setattr,
  .readlink = ll_readlink,
  .mknod = ll_mknod,
  .mkdir = ll_mkdir,
  .unlink = ll_unlink,
  .rmdir = ll_rmdir,
  .symlink = ll_symlink,
  .rename = ll_rename,
  .link = ll_link,
  .open = ll_open,
  .read = ll_read,
  .write = ll_write,
  .flush = ll_flush,
  .release = ll_release,
  .fsync = ll_fsync,
  .opendir = ll_opendir,
  .readdir = ll_readdir,
  .readdirplus = ll_readdirplus,
  .releasedir = ll_releasedir,
  .fsyncdir = ll_fsyncdir,
  .statfs = ll_statfs,
  .setxattr = ll_setxattr,
  .getxattr = ll_getxattr,
  .listxattr = ll_listxattr,
  .removexattr = ll_removexattr,
  .create = ll_create,
};

/* --- delivering requests to JavaScript ---------------------------------------------------- */

static napi_value str_or_undefined(napi_env env, const char *s) {
  napi_value v;
  if (s) napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  else napi_get_undefined(env, &v);
  return v;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

/* handler(op, req, ino, ino2, name, name2, data, size, off, mode, rdev, flags, fh, uid, gid, pid, umask,
 *         attr, killSuidgid) */
static void deliver(void *userdata, request *r) {
  session *s = userdata;
  napi_env env = s->env;
  napi_value argv[19];
  argv[0] = num(env, r->op);
  if (r->req) {
    pending_req *p = malloc(sizeof *p);
    p->req = r->req;
    p->opcode = s->in ? s->in->opcode : 0;
    p->received_ns = s->received_ns;
    napi_create_external(env, p, NULL, NULL, &argv[1]);
  } else {
    napi_get_null(env, &argv[1]);
  }
  argv[2] = num(env, r->ino);
  argv[3] = num(env, r->ino2);
  argv[4] = str_or_undefined(env, r->name);
  argv[5] = str_or_undefined(env, r->name2);
  if (r->data) napi_create_buffer_copy(env, r->size, r->data, NULL, &argv[6]);
  else napi_get_undefined(env, &argv[6]);
  argv[7] = num(env, (double)r->size);
  argv[8] = num(env, r->off);
  argv[9] = num(env, r->mode);
  argv[10] = num(env, r->rdev);
  argv[11] = num(env, r->flags);
  argv[12] = num(env, r->fh);
  argv[13] = num(env, r->uid);
  argv[14] = num(env, r->gid);
  argv[15] = num(env, r->pid);
  argv[16] = num(env, r->umask);
  if (r->op == OP_SETATTR) {
    napi_value arr;
    napi_create_array_with_length(env, 9, &arr);
    napi_set_element(env, arr, 0, num(env, r->to_set));
    for (int i = 0; i < 8; i++) napi_set_element(env, arr, i + 1, num(env, r->attr[i]));
    argv[17] = arr;
  } else {
    napi_get_undefined(env, &argv[17]);
  }
  napi_get_boolean(env, r->kill_suidgid != 0, &argv[18]);
  if (r->req) s->pending++;
  napi_value handler, global;
  napi_get_reference_value(env, s->handler, &handler);
  napi_get_global(env, &global);
  if (napi_call_function(env, global, handler, 19, argv, NULL) == napi_pending_exception) {
    /* The dispatcher catches its own errors; this only happens on a bug there. */
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
  }
}

static void stop_polling(session *s) {
  if (s->polling) {
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, NULL);
    s->polling = 0;
  }
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Counts a request as it arrives, and remembers INIT's flags for ll_init and send_reply. */
static void note_received(session *s, const struct fuse_in_header *in, size_t len) {
  if (in->opcode < OPCODES) s->op_count[in->opcode]++;
  if (in->opcode == FUSE_INIT && len >= sizeof *in + offsetof(struct fuse_init_in, flags2)) {
    s->init_unique = in->unique;
    s->kernel_flags = ((const struct fuse_init_in *)(in + 1))->flags;
  }
}

/* Writes every reply (libfuse's custom I/O): amends the INIT reply, which libfuse 3.14 writes
 * without the flags it does not know (see ll_init). */
static ssize_t send_reply(int fd, struct iovec *iov, int count, void *userdata) {
  session *s = userdata;
  const struct fuse_out_header *out = iov[0].iov_base;
  if (s->init_unique && out->unique == s->init_unique && out->error == 0 && count > 1 &&
      iov[1].iov_len >= offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
    ((struct fuse_init_out *)iov[1].iov_base)->flags |= FUSE_HANDLE_KILLPRIV_V2;
    s->init_unique = 0;
  }
  return writev(fd, iov, count);
}

static ssize_t receive_request(int fd, void *buf, size_t len, void *userdata) {
  (void)userdata;
  return read(fd, buf, len);
}

/* Handles what is queued on /dev/fuse, in one callback scope so promise continuations run once
 * at the end, as after any other I/O callback. Returns the number of requests handled. */
static int drain(session *s) {
  napi_env env = s->env;
  napi_handle_scope hscope;
  napi_callback_scope cscope;
  napi_value resource;
  int handled = 0;
  napi_open_handle_scope(env, &hscope);
  napi_get_reference_value(env, s->resource, &resource);
  napi_open_callback_scope(env, resource, s->async, &cscope);
  while (handled < BATCH && !s->ended) {
    int res = fuse_session_receive_buf(s->se, &s->buf);
    if (res == -EINTR) continue;
    if (res == -EAGAIN) break;
    if (res <= 0 || fuse_session_exited(s->se)) {
      s->ended = 1;
      break;
    }
    s->in = (size_t)res >= sizeof(struct fuse_in_header) ? s->buf.mem : NULL;
    s->received_ns = now_ns();
    if (s->in) note_received(s, s->in, (size_t)res);
    fuse_session_process_buf(s->se, &s->buf);
    s->in = NULL;
    handled++;
  }
  if (s->ended) {
    stop_polling(s);
    request end;
    init_request(&end, OP_ENDED, NULL, 0);
    deliver(s, &end);
  }
  napi_close_callback_scope(env, cscope);
  napi_close_handle_scope(env, hscope);
  return handled;
}

/*
 * After answering, a caller usually sends its next request within microseconds, and on a
 * virtual machine sleeping in epoll and being woken again costs more than that. So when every
 * request so far has been answered, keep reading for a short while before going back to the
 * event loop. Never while an answer waits on I/O: that answer needs the loop.
 */
#define SPIN_NS 50000
#define MAX_SLICE_NS 2000000

static void on_readable(uv_poll_t *handle, int status, int events) {
  (void)events;
  session *s = handle->data;
  if (status != 0) s->ended = 1;
  uint64_t start = now_ns();
  uint64_t last = start;
  drain(s);
  while (!s->ended && s->pending == 0) {
    uint64_t t = now_ns();
    if (t - last > SPIN_NS || t - start > MAX_SLICE_NS) break;
    if (drain(s) > 0) last = now_ns();
  }
}

/* --- exported functions ------------------------------------------------------------------- */

static pending_req *get_req(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

/* After a reply (which frees the request): accounts for it and releases what JavaScript held. */
static void answered(session *s, pending_req *p) {
  s->pending--;
  if (p->opcode < OPCODES) s->op_ns[p->opcode] += (double)(now_ns() - p->received_ns);
  free(p);
}

static double get_num(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

/* attr: a Float64Array-like array [ino, mode, nlink, uid, gid, rdev, size, atime_s, atime_ns,
 * mtime_s, mtime_ns, ctime_s, ctime_ns] starting at `at`. */
#define ATTR_FIELDS 13

static void fill_stat(const double *a, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = (ino_t)a[0];
  st->st_mode = (mode_t)a[1];
  st->st_nlink = (nlink_t)a[2];
  st->st_uid = (uid_t)a[3];
  st->st_gid = (gid_t)a[4];
  st->st_rdev = (dev_t)a[5];
  st->st_size = (off_t)a[6];
  st->st_blksize = 4096;
  st->st_blocks = (blkcnt_t)((a[6] + 511) / 512);
  st->st_atim.tv_sec = (time_t)a[7];
  st->st_atim.tv_nsec = (long)a[8];
  st->st_mtim.tv_sec = (time_t)a[9];
  st->st_mtim.tv_nsec = (long)a[10];
  st->st_ctim.tv_sec = (time_t)a[11];
  st->st_ctim.tv_nsec = (long)a[12];
}

static int get_attr(napi_env env, napi_value v, double *out) {
  napi_typedarray_type type;
  size_t length;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, NULL, NULL) != napi_ok) return -1;
  if (type != napi_float64_array || length < ATTR_FIELDS) return -1;
  memcpy(out, data, ATTR_FIELDS * sizeof(double));
  return 0;
}

static napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

#define ARGS(n)                                                          \
  size_t argc = n;                                                       \
  napi_value argv[n];                                                    \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));           \
  pending_req *p = argc > 0 ? get_req(env, argv[0]) : NULL;              \
  if (!p) {                                                              \
    napi_throw_type_error(env, "LCFS_EFUSE_BINDING", "not a request"); \
    return NULL;                                                         \
  }                                                                      \
  fuse_req_t req = p->req;                                               \
  session *s = fuse_req_userdata(req);

static napi_value reply_err(napi_env env, napi_callback_info info) {
  ARGS(2);
  fuse_reply_err(req, (int)get_num(env, argv[1]));
  answered(s, p);
  return undefined(env);
}

static void fill_entry(napi_env env, napi_value *argv, struct fuse_entry_param *e, const double *a) {
  memset(e, 0, sizeof *e);
  fill_stat(a, &e->attr);
  e->ino = (fuse_ino_t)a[0];
  e->attr_timeout = get_num(env, argv[3]);
  e->entry_timeout = get_num(env, argv[2]);
}

/* replyEntry(req, attr | null, entryTimeout, attrTimeout) */
static napi_value reply_entry(napi_env env, napi_callback_info info) {
  ARGS(4);
  struct fuse_entry_param e;
  double a[ATTR_FIELDS] = {0};
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_null && get_attr(env, argv[1], a) != 0) {
    napi_throw_type_error(env, "LCFS_EFUSE_BINDING", "attr must be a Float64Array");
    return NULL;
  }
  fill_entry(env, argv, &e, a);
  fuse_reply_entry(req, &e);
  answered(s, p);
  return undefined(env);
}

static void fill_file_info(napi_env env, napi_value fh, napi_value flags, struct fuse_file_info *fi) {
  memset(fi, 0, sizeof *fi);
  fi->fh = (uint64_t)get_num(env, fh);
  int f = (int)get_num(env, flags);
  fi->keep_cache = (f & 1) != 0;
  fi->direct_io = (f & 2) != 0;
}

/* replyCreate(req, attr, entryTimeout, attrTimeout, fh, openFlags) */
static napi_value reply_create(napi_env env, napi_callback_info info) {
  ARGS(6);
  struct fuse_entry_param e;
  struct fuse_file_info fi;
  double a[ATTR_FIELDS];
  if (get_attr(env, argv[1], a) != 0) {
    napi_throw_type_error(env, "LCFS_EFUSE_BINDING", "attr must be a Float64Array");
    return NULL;
  }
  fill_entry(env, argv, &e, a);
  fill_file_info(env, argv[4], argv[5], &fi);
  fuse_reply_create(req, &e, &fi);
  answered(s, p);
  return undefined(env);
}

/* replyAttr(req, attr, timeout) */
static napi_value reply_attr(napi_env env, napi_callback_info info) {
  ARGS(3);
  double a[ATTR_FIELDS];
  struct stat st;
  if (get_attr(env, argv[1], a) != 0) {
    napi_throw_type_error(env, "LCFS_EFUSE_BINDING", "attr must be a Float64Array");
    return NULL;
  }
  fill_stat(a, &st);
  fuse_reply_attr(req, &st, get_num(env, argv[2]));
  answered(s, p);
  return undefined(env);
}

/* replyReadlink(req, target) */
static napi_value reply_readlink(napi_env env, napi_callback_info info) {
  ARGS(2);
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[1], NULL, 0, &len));
  char *target = malloc(len + 1);
  napi_get_value_string_utf8(env, argv[1], target, len + 1, &len);
  fuse_reply_readlink(req, target);
  answered(s, p);
  free(target);
  return undefined(env);
}

/* replyOpen(req, fh, flags: 1 keep_cache | 2 direct_io) */
static napi_value reply_open(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct fuse_file_info fi;
  fill_file_info(env, argv[1], argv[2], &fi);
  fuse_reply_open(req, &fi);
  answered(s, p);
  return undefined(env);
}

/* replyWrite(req, count) */
static napi_value reply_write(napi_env env, napi_callback_info info) {
  ARGS(2);
  fuse_reply_write(req, (size_t)get_num(env, argv[1]));
  answered(s, p);
  return undefined(env);
}

/* replyBuf(req, buffer) */
static napi_value reply_buf(napi_env env, napi_callback_info info) {
  ARGS(2);
  void *data = NULL;
  size_t len = 0;
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  fuse_reply_buf(req, data, len);
  answered(s, p);
  return undefined(env);
}

/* replyXattr(req, size) */
static napi_value reply_xattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  fuse_reply_xattr(req, (size_t)get_num(env, argv[1]));
  answered(s, p);
  return undefined(env);
}

/* replyStatfs(req, [bsize, blocks, bfree, bavail, files, ffree, namemax]) */
static napi_value reply_statfs(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct statvfs st;
  memset(&st, 0, sizeof st);
  napi_value v;
  double f[7] = {0};
  for (uint32_t i = 0; i < 7; i++) {
    if (napi_get_element(env, argv[1], i, &v) == napi_ok) f[i] = get_num(env, v);
  }
  st.f_bsize = st.f_frsize = (unsigned long)f[0];
  st.f_blocks = (fsblkcnt_t)f[1];
  st.f_bfree = (fsblkcnt_t)f[2];
  st.f_bavail = (fsblkcnt_t)f[3];
  st.f_files = (fsfilcnt_t)f[4];
  st.f_ffree = st.f_favail = (fsfilcnt_t)f[5];
  st.f_namemax = (unsigned long)f[6];
  fuse_reply_statfs(req, &st);
  answered(s, p);
  return undefined(env);
}

/*
 * replyDir(req, plus, size, offset, names[], attrs Float64Array(n * ATTR_FIELDS), entryTimeout, attrTimeout)
 * Entries from index `offset` on, as many as fit in `size`; each entry's offset is its index + 1.
 * "." and ".." are listed without an entry, so the kernel does not count a lookup for them.
 */
static napi_value reply_dir(napi_env env, napi_callback_info info) {
  ARGS(8);
  bool plus;
  CHECK(napi_get_value_bool(env, argv[1], &plus));
  size_t size = (size_t)get_num(env, argv[2]);
  uint32_t offset = (uint32_t)get_num(env, argv[3]);
  uint32_t count;
  CHECK(napi_get_array_length(env, argv[4], &count));
  napi_typedarray_type type;
  size_t alen;
  double *attrs;
  CHECK(napi_get_typedarray_info(env, argv[5], &type, &alen, (void **)&attrs, NULL, NULL));
  if (type != napi_float64_array || alen < (size_t)count * ATTR_FIELDS) {
    napi_throw_type_error(env, "LCFS_EFUSE_BINDING", "attrs too short");
    return NULL;
  }
  double entry_timeout = get_num(env, argv[6]);
  double attr_timeout = get_num(env, argv[7]);
  char *buf = malloc(size ? size : 1);
  size_t pos = 0;
  char name[1024];
  for (uint32_t i = offset; i < count; i++) {
    napi_value v;
    size_t nlen;
    napi_get_element(env, argv[4], i, &v);
    if (napi_get_value_string_utf8(env, v, name, sizeof name, &nlen) != napi_ok) continue;
    const double *a = attrs + (size_t)i * ATTR_FIELDS;
    size_t need;
    int dot = strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
    if (plus) {
      struct fuse_entry_param e;
      memset(&e, 0, sizeof e);
      fill_stat(a, &e.attr);
      if (!dot) {
        e.ino = (fuse_ino_t)a[0];
        e.entry_timeout = entry_timeout;
        e.attr_timeout = attr_timeout;
      }
      need = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e, i + 1);
    } else {
      struct stat st;
      fill_stat(a, &st);
      need = fuse_add_direntry(req, buf + pos, size - pos, name, &st, i + 1);
    }
    if (need > size - pos) break;
    pos += need;
  }
  fuse_reply_buf(req, buf, pos);
  answered(s, p);
  free(buf);
  return undefined(env);
}

/* mount(mountpoint, options, handler) → session */
static void finalize_session(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  session *s = data;
  free(s->buf.mem);
  free(s->mountpoint);
  free(s);
}

static napi_value mount_fs(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char mountpoint[4096], options[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[0], mountpoint, sizeof mountpoint, &len));
  CHECK(napi_get_value_string_utf8(env, argv[1], options, sizeof options, &len));

  session *s = calloc(1, sizeof(session));
  s->env = env;
  s->mountpoint = strdup(mountpoint);
  char *fuse_argv[] = {"lcfs", "-o", options, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
  s->se = fuse_session_new(&args, &ops, sizeof ops, s);
  if (!s->se) {
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, "LCFS_EFUSE_MOUNT", "fuse_session_new failed: bad mount options?");
    return NULL;
  }
  if (fuse_session_mount(s->se, mountpoint) != 0) {
    fuse_session_destroy(s->se);
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, "LCFS_EFUSE_MOUNT", "fuse_session_mount failed (see stderr)");
    return NULL;
  }
  int fd = fuse_session_fd(s->se);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  static const struct fuse_custom_io io = {.writev = send_reply, .read = receive_request};
  if (fuse_session_custom_io(s->se, &io, fd) != 0) {
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, "LCFS_EFUSE_MOUNT", "fuse_session_custom_io failed");
    return NULL;
  }

  napi_value resource, name;
  napi_create_object(env, &resource);
  napi_create_string_utf8(env, "lcfs-fuse", NAPI_AUTO_LENGTH, &name);
  CHECK(napi_async_init(env, resource, name, &s->async));
  CHECK(napi_create_reference(env, resource, 1, &s->resource));
  CHECK(napi_create_reference(env, argv[2], 1, &s->handler));

  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  uv_poll_init(loop, &s->poll, fd);
  s->poll.data = s;
  uv_poll_start(&s->poll, UV_READABLE, on_readable);
  s->polling = 1;

  napi_value handle;
  CHECK(napi_create_external(env, s, finalize_session, NULL, &handle));
  return handle;
}

static session *get_session(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

/* unmount(session, lazy) → 0 or errno. Not lazy: fails with EBUSY while the mount is in use. */
static napi_value unmount_fs(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session *s = get_session(env, argv[0]);
  bool lazy = false;
  napi_get_value_bool(env, argv[1], &lazy);
  int err = 0;
  if (!s) err = EINVAL;
  else if (umount2(s->mountpoint, lazy ? MNT_DETACH : 0) != 0) err = errno;
  napi_value out;
  napi_create_int32(env, err, &out);
  return out;
}

/* close(session): after the session ended, releases it. */
static napi_value close_fs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session *s = get_session(env, argv[0]);
  if (s && s->se) {
    stop_polling(s);
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    s->se = NULL;
    napi_async_destroy(env, s->async);
    napi_delete_reference(env, s->handler);
    napi_delete_reference(env, s->resource);
  }
  return undefined(env);
}

/* requestStats(session) → Float64Array(2 × OPCODES): requests received per kernel opcode, then
 * nanoseconds spent from their receipt to their reply. */
static napi_value request_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session *s = get_session(env, argv[0]);
  napi_value buffer, out;
  void *data;
  CHECK(napi_create_arraybuffer(env, 2 * OPCODES * sizeof(double), &data, &buffer));
  memset(data, 0, 2 * OPCODES * sizeof(double));
  if (s) {
    memcpy(data, s->op_count, sizeof s->op_count);
    memcpy((double *)data + OPCODES, s->op_ns, sizeof s->op_ns);
  }
  CHECK(napi_create_typedarray(env, napi_float64_array, 2 * OPCODES, buffer, 0, &out));
  return out;
}

/* detach(path) → 0 or errno: lazily unmounts whatever is mounted there (a stale mount). */
static napi_value detach_path(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char path[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len));
  napi_value out;
  napi_create_int32(env, umount2(path, MNT_DETACH) == 0 ? 0 : errno, &out);
  return out;
}

/* Runs on the thread pool: the kernel may make a notification wait for a directory lock held
 * by a request that only the event loop can answer, so the loop must not be the one waiting. */
static void run_invalidations(napi_env env, void *data) {
  (void)env;
  invalidation_batch *b = data;
  for (size_t i = 0; i < b->count; i++) {
    invalidation *item = &b->items[i];
    /* Errors only mean the kernel had nothing cached, or the session is going. */
    if (item->name) fuse_lowlevel_notify_inval_entry(b->s->se, item->ino, item->name, strlen(item->name));
    else fuse_lowlevel_notify_inval_inode(b->s->se, item->ino, item->attributes_only ? -1 : 0, 0);
  }
}

static void invalidations_done(napi_env env, napi_status status, void *data) {
  invalidation_batch *b = data;
  napi_value u;
  napi_get_undefined(env, &u);
  napi_resolve_deferred(env, b->deferred, u);
  napi_delete_async_work(env, b->work);
  for (size_t i = 0; i < b->count; i++) free(b->items[i].name);
  free(b->items);
  free(b);
  (void)status;
}

/* Sends a batch's notifications from the thread pool; the promise resolves once they are sent. */
static napi_value queue_invalidations(napi_env env, invalidation_batch *b, napi_value promise) {
  if (b->count == 0) {
    napi_value u;
    napi_get_undefined(env, &u);
    napi_resolve_deferred(env, b->deferred, u);
    free(b->items);
    free(b);
    return promise;
  }
  napi_value resource_name;
  napi_create_string_utf8(env, "lcfs-invalidate", NAPI_AUTO_LENGTH, &resource_name);
  CHECK(napi_create_async_work(env, NULL, resource_name, run_invalidations, invalidations_done, b, &b->work));
  CHECK(napi_queue_async_work(env, b->work));
  return promise;
}

/* invalidateAttributes(session, nodeId) → Promise: drops a node's cached attributes, keeping
 * its pages (dropping pages could wait on pages a pending write holds locked). */
static napi_value invalidate_attributes(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session *s = get_session(env, argv[0]);
  napi_value promise;
  invalidation_batch *b = calloc(1, sizeof *b);
  CHECK(napi_create_promise(env, &b->deferred, &promise));
  b->s = s;
  b->count = s && s->se ? 1 : 0;
  b->items = calloc(1, sizeof(invalidation));
  b->items[0].ino = (fuse_ino_t)get_num(env, argv[1]);
  b->items[0].attributes_only = 1;
  return queue_invalidations(env, b, promise);
}

/* invalidate(session, [[nodeId, name?], ...]) → Promise: drops cached names in directories,
 * and for entries without a name a node's cached attributes and pages. */
static napi_value invalidate(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session *s = get_session(env, argv[0]);
  napi_value promise;
  invalidation_batch *b = calloc(1, sizeof *b);
  CHECK(napi_create_promise(env, &b->deferred, &promise));
  uint32_t count = 0;
  if (s && s->se) napi_get_array_length(env, argv[1], &count);
  b->s = s;
  b->count = count;
  b->items = calloc(count ? count : 1, sizeof(invalidation));
  for (uint32_t i = 0; i < count; i++) {
    napi_value pair, id, name;
    napi_get_element(env, argv[1], i, &pair);
    napi_get_element(env, pair, 0, &id);
    b->items[i].ino = (fuse_ino_t)get_num(env, id);
    napi_valuetype t = napi_undefined;
    if (napi_get_element(env, pair, 1, &name) == napi_ok) napi_typeof(env, name, &t);
    if (t == napi_string) {
      size_t len;
      napi_get_value_string_utf8(env, name, NULL, 0, &len);
      b->items[i].name = malloc(len + 1);
      napi_get_value_string_utf8(env, name, b->items[i].name, len + 1, &len);
    }
  }
  return queue_invalidations(env, b, promise);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"mount", NULL, mount_fs, NULL, NULL, NULL, napi_default, NULL},
    {"unmount", NULL, unmount_fs, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, close_fs, NULL, NULL, NULL, napi_default, NULL},
    {"detach", NULL, detach_path, NULL, NULL, NULL, napi_default, NULL},
    {"requestStats", NULL, request_stats, NULL, NULL, NULL, napi_default, NULL},
    {"invalidate", NULL, invalidate, NULL, NULL, NULL, napi_default, NULL},
    {"invalidateAttributes", NULL, invalidate_attributes, NULL, NULL, NULL, napi_default, NULL},
    {"replyErr", NULL, reply_err, NULL, NULL, NULL, napi_default, NULL},
    {"replyEntry", NULL, reply_entry, NULL, NULL, NULL, napi_default, NULL},
    {"replyCreate", NULL, reply_create, NULL, NULL, NULL, napi_default, NULL},
    {"replyAttr", NULL, reply_attr, NULL, NULL, NULL, napi_default, NULL},
    {"replyReadlink", NULL, reply_readlink, NULL, NULL, NULL, napi_default, NULL},
    {"replyOpen", NULL, reply_open, NULL, NULL, NULL, napi_default, NULL},
    {"replyWrite", NULL, reply_write, NULL, NULL, NULL, napi_default, NULL},
    {"replyBuf", NULL, reply_buf, NULL, NULL, NULL, napi_default, NULL},
    {"replyXattr", NULL, reply_xattr, NULL, NULL, NULL, napi_default, NULL},
    {"replyStatfs", NULL, reply_statfs, NULL, NULL, NULL, napi_default, NULL},
    {"replyDir", NULL, reply_dir, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
