// io_uring IoContext (see io_context.h). Reads, writes (FUA as RWF_DSYNC) and
// flushes (fdatasync) of devices with a file descriptor go through the ring;
// short transfers are resubmitted for the remainder. Everything else runs
// synchronously and completes at the next run(). wake() writes an eventfd
// that the ring always has a read posted on.
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

#include "io/io_context.h"
#include "util/log.h"

namespace multisnap {
namespace {

constexpr uint64_t kWakeTag = 1;  // user_data of the eventfd read; ops are pointers (never 1)

class UringIoContext final : public IoContext {
 public:
  ~UringIoContext() override {
    io_uring_queue_exit(&ring_);
    if (event_fd_ >= 0) ::close(event_fd_);
  }

  Status init(unsigned entries) {
    int r = io_uring_queue_init(entries, &ring_, 0);
    if (r < 0) return errno_status(-r, "io_uring_queue_init");
    event_fd_ = eventfd(0, EFD_CLOEXEC);  // blocking: io_uring then waits on it
    if (event_fd_ < 0) return errno_status(errno, "eventfd");
    arm_wake();
    return Status::ok();
  }

  void submit(IoOp* op) override {
    bool ring_capable = op->dev->fd() >= 0 &&
                        (op->kind == IoOp::Kind::kRead || op->kind == IoOp::Kind::kWrite ||
                         op->kind == IoOp::Kind::kFlush);
    if (!ring_capable) {
      ready_.push_back({op, execute_sync(*op)});
      return;
    }
    op->progress = 0;
    ++in_ring_;
    queue(op);
  }

  size_t run(bool wait, int timeout_ms) override {
    flush_overflow();
    kick();
    size_t n = run_ready();
    if (n == 0 && wait) {
      io_uring_cqe* cqe = nullptr;
      if (timeout_ms < 0) {
        io_uring_wait_cqe(&ring_, &cqe);
      } else {
        __kernel_timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000LL};
        io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
      }
    }
    reap();
    n += run_ready();
    flush_overflow();
    kick();
    return n;
  }

  void kick() override {
    if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
  }

  void wake() override {
    uint64_t one = 1;
    ssize_t r = ::write(event_fd_, &one, sizeof one);
    (void)r;
  }

  size_t in_flight() const override { return in_ring_ + ready_.size(); }

 private:
  void arm_wake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    io_uring_prep_read(sqe, event_fd_, &wake_value_, sizeof wake_value_, 0);
    io_uring_sqe_set_data64(sqe, kWakeTag);
    io_uring_submit(&ring_);
  }

  void queue(IoOp* op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    if (!sqe) {
      overflow_.push_back(op);
      return;
    }
    int fd = op->dev->fd();
    if (op->direct && op->kind == IoOp::Kind::kWrite && op->dev->direct_fd() >= 0) fd = op->dev->direct_fd();
    else op->direct = false;
    char* buf = static_cast<char*>(op->buf) + op->progress;
    unsigned len = static_cast<unsigned>(std::min<uint64_t>(op->len - op->progress, 1u << 30));
    uint64_t off = op->offset + op->progress;
    // A buffered write in the device's pieces, one after the other (as a
    // short write's rest): BlockDevice::write_piece.
    if (op->kind == IoOp::Kind::kWrite && !op->direct && !op->fua)
      len = static_cast<unsigned>(first_piece(off, len, op->dev->write_piece()));
    switch (op->kind) {
      case IoOp::Kind::kRead: io_uring_prep_read(sqe, fd, buf, len, off); break;
      case IoOp::Kind::kWrite:
        io_uring_prep_write(sqe, fd, buf, len, off);
        if (op->fua) sqe->rw_flags = RWF_DSYNC;
        break;
      default: io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); break;
    }
    io_uring_sqe_set_data(sqe, op);
  }

  void flush_overflow() {
    while (!overflow_.empty() && io_uring_sq_space_left(&ring_) > 0) {
      IoOp* op = overflow_.front();
      overflow_.pop_front();
      queue(op);
    }
  }

  size_t run_ready() {
    size_t n = 0;
    while (!ready_.empty()) {
      auto [op, status] = std::move(ready_.front());
      ready_.pop_front();
      ++n;
      complete(op, std::move(status));
    }
    return n;
  }

  // Moves finished ring ops to ready_ (or resubmits the rest of a short one).
  void reap() {
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    bool rearm = false;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      if (io_uring_cqe_get_data64(cqe) == kWakeTag) {
        rearm = true;
        continue;
      }
      auto* op = static_cast<IoOp*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      if (op->kind == IoOp::Kind::kFlush) {
        finish(op, res < 0 ? errno_status(-res, "flush " + op->dev->describe()) : Status::ok());
      } else if (res == -EINVAL && op->direct) {
        // The file system takes no direct write here after all: the page
        // cache, for this write and every later one.
        if (op->dev->refuse_direct())  // once, not for every write in flight
          MS_LOG_WARN("{}: direct writes refused (EINVAL); copies go through the page cache",
                      op->dev->describe());
        queue(op);
      } else if (res < 0) {
        finish(op, errno_status(-res, (op->kind == IoOp::Kind::kRead ? "read " : "write ") +
                                          op->dev->describe()));
      } else if (res == 0) {
        finish(op, make_error(Code::kIoError, "{} at {}: unexpected end of device",
                              op->dev->describe(), op->offset + op->progress));
      } else {
        op->progress += static_cast<uint64_t>(res);
        if (op->progress % kDirectAlign != 0) op->direct = false;  // the rest of a short write: unaligned
        if (op->progress < op->len) queue(op);
        else finish(op, Status::ok());
      }
    }
    io_uring_cq_advance(&ring_, seen);
    if (rearm) arm_wake();
  }

  void finish(IoOp* op, Status status) {
    --in_ring_;
    ready_.push_back({op, std::move(status)});
  }

  io_uring ring_{};
  int event_fd_ = -1;
  uint64_t wake_value_ = 0;
  size_t in_ring_ = 0;
  std::deque<std::pair<IoOp*, Status>> ready_;
  std::deque<IoOp*> overflow_;
};

}  // namespace

Result<std::unique_ptr<IoContext>> make_uring_io_context(unsigned entries) {
  auto ctx = std::make_unique<UringIoContext>();
  MS_TRY(ctx->init(entries));
  return std::unique_ptr<IoContext>(std::move(ctx));
}

std::unique_ptr<IoContext> make_default_io_context() {
  auto r = make_uring_io_context(256);
  if (r.is_ok()) return std::move(r).value();
  MS_LOG_WARN("io_uring is not available ({}); using synchronous I/O", r.status().to_string());
  return make_sync_io_context();
}

}  // namespace multisnap
