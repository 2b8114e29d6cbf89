#include "engine/clean_map.h"

namespace multisnap {

CleanMap::CleanMap(uint64_t chunks, size_t budget_bytes)
    : chunks_(chunks), budget_pages_(budget_bytes / kPageBytes),
      pages_(new std::atomic<Word*>[(chunks + kPageBits - 1) / kPageBits]) {
  for (uint64_t i = 0; i < (chunks + kPageBits - 1) / kPageBits; ++i) pages_[i].store(nullptr);
}

CleanMap::~CleanMap() {
  for (uint64_t i = 0; i < (chunks_ + kPageBits - 1) / kPageBits; ++i) delete[] pages_[i].load();
}

bool CleanMap::test(uint64_t chunk) const {
  if (chunk >= chunks_) return false;
  Word* p = pages_[chunk / kPageBits].load(std::memory_order_acquire);
  if (!p) return false;
  uint64_t bit = chunk % kPageBits;
  return (p[bit / 64].load(std::memory_order_acquire) >> (bit % 64)) & 1;
}

void CleanMap::mark(uint64_t chunk) {
  if (chunk >= chunks_) return;
  std::atomic<Word*>& slot = pages_[chunk / kPageBits];
  Word* p = slot.load(std::memory_order_relaxed);
  if (!p) {
    if (allocated_ >= budget_pages_) return;
    p = new Word[kWords];
    for (size_t w = 0; w < kWords; ++w) p[w].store(0, std::memory_order_relaxed);
    ++allocated_;
    slot.store(p, std::memory_order_release);
  }
  uint64_t bit = chunk % kPageBits;
  p[bit / 64].fetch_or(uint64_t{1} << (bit % 64), std::memory_order_release);
}

void CleanMap::clear() {
  for (uint64_t i = 0; i < (chunks_ + kPageBits - 1) / kPageBits; ++i)
    if (Word* p = pages_[i].load())
      for (size_t w = 0; w < kWords; ++w) p[w].store(0, std::memory_order_relaxed);
}

}  // namespace multisnap
