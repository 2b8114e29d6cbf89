// CleanMap: origin chunks known to need no copy-on-write, so that origin
// writes to them can go straight to the origin from the caller's thread.
//
// A chunk is marked clean by the engine thread when an origin write to it
// found no pending job, no snapshot reading it from the origin, and nothing
// left for the store to preserve: every live snapshot's view of the chunk
// is then committed elsewhere. Only a new snapshot can make a clean chunk
// need a copy again, so snapshot create clears the whole map (with direct
// writes shut out by the gate in EngineCore).
//
// Memory is bounded: the bitmap is allocated in 4 KiB pages (32,768 chunks
// each) on first use, up to a budget; chunks whose page would exceed it are
// simply never marked (they take the engine's path).
//
// Thread-safety: test() from any thread; mark() from the engine thread;
// clear() only while no test() can run (the gate is closed).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace multisnap {

class CleanMap {
 public:
  CleanMap(uint64_t chunks, size_t budget_bytes);
  ~CleanMap();
  CleanMap(const CleanMap&) = delete;
  CleanMap& operator=(const CleanMap&) = delete;

  bool test(uint64_t chunk) const;
  void mark(uint64_t chunk);
  void clear();
  size_t bytes() const { return allocated_ * kPageBytes; }

 private:
  static constexpr size_t kPageBytes = 4096;
  static constexpr uint64_t kPageBits = kPageBytes * 8;
  static constexpr size_t kWords = kPageBytes / 8;
  using Word = std::atomic<uint64_t>;

  uint64_t chunks_;
  size_t budget_pages_;
  size_t allocated_ = 0;
  std::unique_ptr<std::atomic<Word*>[]> pages_;  // each: kWords words, or null
};

}  // namespace multisnap
