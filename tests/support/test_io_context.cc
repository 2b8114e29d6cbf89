#include "support/test_io_context.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <vector>

namespace multisnap {

namespace {

class ReorderingIoContext final : public IoContext {
 public:
  explicit ReorderingIoContext(uint64_t seed) : rng_(seed) {}

  void submit(IoOp* op) override { pending_.push_back(op); }

  size_t run(bool wait, int timeout_ms) override {
    if (pending_.empty()) {
      if (wait) wait_for_wake(timeout_ms);
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
  void wake() override {
    std::lock_guard lock(mu_);
    woken_ = true;
    cv_.notify_all();
  }
  size_t in_flight() const override { return pending_.size(); }

 private:
  void wait_for_wake(int timeout_ms) {
    std::unique_lock lock(mu_);
    if (timeout_ms < 0) cv_.wait(lock, [&] { return woken_; });
    else cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return woken_; });
    woken_ = false;
  }

  std::vector<IoOp*> pending_;
  std::mt19937_64 rng_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
};

}  // namespace

std::unique_ptr<IoContext> make_reordering_io_context(uint64_t seed) {
  return std::make_unique<ReorderingIoContext>(seed);
}

std::unique_ptr<IoContext> make_test_io_context(TestIo kind, uint64_t seed) {
  switch (kind) {
    case TestIo::kSync: return make_sync_io_context();
    case TestIo::kReordering: return make_reordering_io_context(seed);
    case TestIo::kUring: break;
  }
  return make_default_io_context();
}

}  // namespace multisnap
