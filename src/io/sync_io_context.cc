// The synchronous IoContext (see io_context.h).
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "io/io_context.h"

namespace multisnap {

Status execute_sync(IoOp& op) {
  switch (op.kind) {
    case IoOp::Kind::kRead: return op.dev->read(op.offset, op.buf, op.len);
    case IoOp::Kind::kWrite:
      return op.fua ? op.dev->write_fua(op.offset, op.buf, op.len)
                    : op.dev->write(op.offset, op.buf, op.len);
    case IoOp::Kind::kFlush: return op.dev->flush();
    case IoOp::Kind::kDiscard:
    case IoOp::Kind::kWriteZeroes: {
      Status s = op.kind == IoOp::Kind::kDiscard ? op.dev->discard(op.offset, op.len)
                                                 : op.dev->write_zeroes(op.offset, op.len);
      if (s.is_ok() && op.fua) s = op.dev->flush();  // durable when done
      return s;
    }
  }
  return make_error(Code::kInvalidArgument, "unknown I/O kind");
}

namespace {

// Wake-up plumbing: a condition variable the run() loop can sleep on when it
// has nothing to complete.
class Waiter {
 public:
  void wake() {
    std::lock_guard lock(mu_);
    woken_ = true;
    cv_.notify_all();
  }
  void wait(int timeout_ms) {
    std::unique_lock lock(mu_);
    if (timeout_ms < 0) cv_.wait(lock, [&] { return woken_; });
    else cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return woken_; });
    woken_ = false;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
};

class SyncIoContext final : public IoContext {
 public:
  void submit(IoOp* op) override { ready_.push_back({op, execute_sync(*op)}); }

  size_t run(bool wait, int timeout_ms) override {
    if (ready_.empty() && wait) waiter_.wait(timeout_ms);
    size_t n = 0;
    while (!ready_.empty()) {
      auto [op, status] = std::move(ready_.front());
      ready_.pop_front();
      ++n;
      complete(op, std::move(status));
    }
    return n;
  }
  void wake() override { waiter_.wake(); }
  size_t in_flight() const override { return ready_.size(); }

 private:
  std::deque<std::pair<IoOp*, Status>> ready_;
  Waiter waiter_;
};

}  // namespace

std::unique_ptr<IoContext> make_sync_io_context() { return std::make_unique<SyncIoContext>(); }

}  // namespace multisnap
