// The synchronous and reordering IoContexts (see io_context.h).
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <vector>

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

// Wake-up plumbing shared by both: a condition variable the run() loop can
// sleep on when it has nothing to complete.
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

class ReorderingIoContext final : public IoContext {
 public:
  explicit ReorderingIoContext(uint64_t seed) : rng_(seed) {}

  void submit(IoOp* op) override { pending_.push_back(op); }

  size_t run(bool wait, int timeout_ms) override {
    if (pending_.empty()) {
      if (wait) waiter_.wait(timeout_ms);
      return 0;
    }
    // Execute a random, non-empty subset in random order; completions run
    // in that order. The rest stay in flight for a later run().
    std::shuffle(pending_.begin(), pending_.end(), rng_);
    size_t count = std::uniform_int_distribution<size_t>(1, pending_.size())(rng_);
    std::vector<IoOp*> batch(pending_.begin(), pending_.begin() + static_cast<long>(count));
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(count));
    std::vector<Status> results;
    results.reserve(batch.size());
    for (IoOp* op : batch) results.push_back(execute_sync(*op));
    for (size_t i = 0; i < batch.size(); ++i) complete(batch[i], std::move(results[i]));
    return batch.size();
  }
  void wake() override { waiter_.wake(); }
  size_t in_flight() const override { return pending_.size(); }

 private:
  std::vector<IoOp*> pending_;
  std::mt19937_64 rng_;
  Waiter waiter_;
};

}  // namespace

std::unique_ptr<IoContext> make_sync_io_context() { return std::make_unique<SyncIoContext>(); }
std::unique_ptr<IoContext> make_reordering_io_context(uint64_t seed) {
  return std::make_unique<ReorderingIoContext>(seed);
}

}  // namespace multisnap
