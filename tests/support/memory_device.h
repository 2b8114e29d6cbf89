// MemoryDevice: a sparse in-RAM device that can simulate a power cut.
//
// It keeps two images: what a reader sees now, and what would survive a
// crash (everything up to the last flush). Writes since the last flush are
// kept in order in a log, as whole 512-byte sectors (a write of part of a
// sector logs the sector as it is after the write). crash() builds the surviving image from the last
// flushed state plus an arbitrary subset of the logged writes, optionally
// tearing one of them at 512-byte granularity, as a disk with a volatile
// write cache may do. discard and write_zeroes are logged as writes of zeros.
//
// apply() replays one write or flush: the crash-replay test records the
// operations of both devices itself (a recording BlockDevice in front of
// this one) and replays them onto devices it then crashes (crashed_copy).
//
// Thread-safe (one mutex).
#pragma once

#include <array>
#include <memory>
#include <atomic>
#include <mutex>
#include <random>
#include <unordered_map>
#include <vector>

#include "io/block_device.h"

namespace multisnap {

struct CrashOptions {
  double keep_probability = 0.5;  // each unflushed write survives with this probability
  bool tear = true;               // tear one surviving write at 512-byte granularity
};

struct TraceOp {
  enum class Kind { kWrite, kFlush } kind;
  uint64_t offset = 0;
  std::vector<uint8_t> data;  // empty for kFlush
};

class MemoryDevice final : public BlockDevice {
 public:
  explicit MemoryDevice(uint64_t size, std::string name = "memory");

  uint64_t size() const override { return size_.load(); }
  // Grows at once and durably (as FileDevice's fsync'ed ftruncate).
  Result<uint64_t> resize(uint64_t size) override;
  Status read(uint64_t offset, void* buf, size_t len) override;
  Status write(uint64_t offset, const void* buf, size_t len) override;
  Status flush() override;
  Status discard(uint64_t offset, uint64_t len) override;
  Status write_zeroes(uint64_t offset, uint64_t len) override;
  Result<std::vector<Extent>> allocation(uint64_t offset, uint64_t len) override;
  std::string describe() const override { return name_; }

  // Simulates a power cut: the device afterwards holds what survived.
  void crash(std::mt19937_64& rng, const CrashOptions& options = {});
  // A new device as this one would be after crash(rng, options), this one
  // unchanged (the same draws from rng): the crash-replay test cuts each
  // prefix of a recording without replaying the prefix every time.
  std::unique_ptr<MemoryDevice> crashed_copy(std::mt19937_64& rng, const CrashOptions& options = {}) const;
  size_t unflushed_writes() const;

  void apply(const TraceOp& op);  // replays one recorded operation

  // Writes bytes straight into both images, bypassing the write log: for
  // tests that damage a block on purpose.
  void poke(uint64_t offset, const void* buf, size_t len);

  uint64_t write_count() const;
  uint64_t flush_count() const;

  // A new device holding this one's current image (what a reader sees now),
  // or its durable one (what a power cut that keeps no unflushed write
  // leaves); nothing unflushed in the copy.
  std::unique_ptr<MemoryDevice> copy_image(bool durable) const;

 private:
  static constexpr size_t kPage = 4096;
  static constexpr size_t kSector = 512;
  using Page = std::array<uint8_t, kPage>;
  using Image = std::unordered_map<uint64_t, std::unique_ptr<Page>>;

  static void image_write(Image& img, uint64_t offset, const uint8_t* data, size_t len);
  static void image_read(const Image& img, uint64_t offset, uint8_t* data, size_t len);
  Status write_locked(uint64_t offset, const uint8_t* data, size_t len);

  mutable std::mutex mu_;
  std::atomic<uint64_t> size_;
  std::string name_;
  Image current_;
  Image durable_;
  struct Pending {
    uint64_t offset;
    std::vector<uint8_t> data;
  };
  std::vector<Pending> log_;
  uint64_t writes_ = 0;
  uint64_t flushes_ = 0;
};

}  // namespace multisnap
