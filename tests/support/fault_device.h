// FaultDevice: wraps another BlockDevice and makes chosen calls fail.
//
// A rule matches calls of one kind (read, write, flush, any) whose range
// overlaps an optional window; it fires on the Nth matching call from the
// time it was set, or at random with a probability, and then either once or
// on every later matching call (a dead disk). Failing calls do not reach the
// inner device. Thread-safe.
#pragma once

#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "io/block_device.h"

namespace multisnap {

enum class FaultOp { kRead, kWrite, kFlush, kAny };

struct FaultRule {
  FaultOp op = FaultOp::kAny;
  uint64_t nth = 1;                  // fire on the nth matching call (1 = the next one)
  double probability = 0;            // if > 0: fire at random instead of on the nth call
  bool sticky = false;               // once fired, fail every later matching call
  Code code = Code::kIoError;        // kIoError or kNoSpace
  uint64_t window_offset = 0;        // only calls overlapping [offset, offset+len)
  uint64_t window_len = UINT64_MAX;
  uint64_t seed = 1;
};

class FaultDevice final : public BlockDevice {
 public:
  explicit FaultDevice(BlockDevice& inner) : inner_(inner) {}

  void add_rule(const FaultRule& rule);
  void clear_rules();
  uint64_t injected() const;

  uint64_t size() const override { return inner_.size(); }
  Status read(uint64_t offset, void* buf, size_t len) override;
  Status write(uint64_t offset, const void* buf, size_t len) override;
  Status write_fua(uint64_t offset, const void* buf, size_t len) override;
  Status flush() override;
  Status discard(uint64_t offset, uint64_t len) override;
  Status write_zeroes(uint64_t offset, uint64_t len) override;
  Result<uint64_t> resize(uint64_t size) override { return inner_.resize(size); }
  std::string describe() const override { return "fault(" + inner_.describe() + ")"; }

 private:
  struct ActiveRule {
    FaultRule rule;
    uint64_t seen = 0;
    bool fired = false;
    std::mt19937_64 rng;
  };
  Status maybe_fail(FaultOp op, uint64_t offset, uint64_t len);

  BlockDevice& inner_;
  mutable std::mutex mu_;
  std::vector<ActiveRule> rules_;
  uint64_t injected_ = 0;
};

}  // namespace multisnap
