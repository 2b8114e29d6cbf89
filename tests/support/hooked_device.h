// HookedDevice: forwards every call to another BlockDevice and lets a test
// look at each write before it reaches that device, and at each flush
// after it completed. Tests use it to check the order of writes across two
// devices (tests/engine/pipeline_test.cc: no origin write before the
// commit that preserves the old contents is durable on the store).
//
// The hooks run on the thread that calls write()/flush(); the device adds
// no locking of its own.
#pragma once

#include <functional>

#include "io/block_device.h"

namespace multisnap {

class HookedDevice final : public BlockDevice {
 public:
  // offset, length, and the bytes (nullptr: zeros, for discard and
  // write-zeroes, which the wrapped device is asked to do as such).
  using WriteHook = std::function<void(uint64_t, uint64_t, const uint8_t*)>;

  explicit HookedDevice(BlockDevice& inner) : inner_(inner) {}
  void on_write(WriteHook hook) { before_write_ = std::move(hook); }
  void on_flush(std::function<void()> hook) { after_flush_ = std::move(hook); }

  uint64_t size() const override { return inner_.size(); }
  Status read(uint64_t offset, void* buf, size_t len) override { return inner_.read(offset, buf, len); }
  Status write(uint64_t offset, const void* buf, size_t len) override {
    if (before_write_) before_write_(offset, len, static_cast<const uint8_t*>(buf));
    return inner_.write(offset, buf, len);
  }
  Status write_fua(uint64_t offset, const void* buf, size_t len) override {
    if (before_write_) before_write_(offset, len, static_cast<const uint8_t*>(buf));
    return inner_.write_fua(offset, buf, len);
  }
  Status flush() override {
    Status s = inner_.flush();
    if (s.is_ok() && after_flush_) after_flush_();
    return s;
  }
  Status discard(uint64_t offset, uint64_t len) override {
    if (before_write_) before_write_(offset, len, nullptr);
    return inner_.discard(offset, len);
  }
  Status write_zeroes(uint64_t offset, uint64_t len) override {
    if (before_write_) before_write_(offset, len, nullptr);
    return inner_.write_zeroes(offset, len);
  }
  Result<std::vector<Extent>> allocation(uint64_t offset, uint64_t len) override {
    return inner_.allocation(offset, len);
  }
  Status preallocate(uint64_t offset, uint64_t len) override { return inner_.preallocate(offset, len); }
  std::string describe() const override { return inner_.describe(); }

 private:
  BlockDevice& inner_;
  WriteHook before_write_;
  std::function<void()> after_flush_;
};

}  // namespace multisnap
