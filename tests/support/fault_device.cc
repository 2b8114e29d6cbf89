#include "support/fault_device.h"

namespace multisnap {

void FaultDevice::add_rule(const FaultRule& rule) {
  std::lock_guard lock(mu_);
  rules_.push_back({rule, 0, false, std::mt19937_64(rule.seed)});
}

void FaultDevice::clear_rules() {
  std::lock_guard lock(mu_);
  rules_.clear();
}

uint64_t FaultDevice::injected() const {
  std::lock_guard lock(mu_);
  return injected_;
}

Status FaultDevice::maybe_fail(FaultOp op, uint64_t offset, uint64_t len) {
  std::lock_guard lock(mu_);
  for (auto& r : rules_) {
    const FaultRule& f = r.rule;
    if (f.op != FaultOp::kAny && f.op != op) continue;
    bool overlaps = op == FaultOp::kFlush ||
                    (offset < f.window_offset + std::min(f.window_len, UINT64_MAX - f.window_offset) &&
                     f.window_offset < offset + len);
    if (!overlaps) continue;
    bool fire = false;
    if (r.fired && f.sticky) {
      fire = true;
    } else if (!r.fired || f.probability > 0) {
      ++r.seen;
      if (f.probability > 0) fire = std::bernoulli_distribution(f.probability)(r.rng);
      else fire = r.seen == f.nth;
    }
    if (fire) {
      r.fired = true;
      ++injected_;
      return make_error(f.code, "{}: injected {} at offset {}", inner_.describe(),
                        f.code == Code::kNoSpace ? "ENOSPC" : "EIO", offset);
    }
  }
  return Status::ok();
}

Status FaultDevice::read(uint64_t offset, void* buf, size_t len) {
  MS_TRY(maybe_fail(FaultOp::kRead, offset, len));
  return inner_.read(offset, buf, len);
}

Status FaultDevice::write(uint64_t offset, const void* buf, size_t len) {
  MS_TRY(maybe_fail(FaultOp::kWrite, offset, len));
  return inner_.write(offset, buf, len);
}

Status FaultDevice::write_fua(uint64_t offset, const void* buf, size_t len) {
  MS_TRY(maybe_fail(FaultOp::kWrite, offset, len));
  return inner_.write_fua(offset, buf, len);
}

Status FaultDevice::flush() {
  MS_TRY(maybe_fail(FaultOp::kFlush, 0, 0));
  return inner_.flush();
}

Status FaultDevice::discard(uint64_t offset, uint64_t len) {
  MS_TRY(maybe_fail(FaultOp::kWrite, offset, len));
  return inner_.discard(offset, len);
}

Status FaultDevice::write_zeroes(uint64_t offset, uint64_t len) {
  MS_TRY(maybe_fail(FaultOp::kWrite, offset, len));
  return inner_.write_zeroes(offset, len);
}

}  // namespace multisnap
