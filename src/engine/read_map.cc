#include "engine/read_map.h"

#include <mutex>
#include <thread>

namespace multisnap {

uint64_t ReadMap::enter() {
  for (;;) {
    uint64_t e = epoch_.load();
    readers_[e & 1].fetch_add(1);
    if (epoch_.load() == e) return e;
    readers_[e & 1].fetch_sub(1);  // the epoch moved on meanwhile: join the new one
  }
}

bool ReadMap::find_run(SnapshotId id, uint64_t first, uint64_t last, uint64_t* out) const {
  std::shared_lock lock(mu_);
  auto s = map_.find(id);
  if (s == map_.end()) return false;
  for (uint64_t c = first; c <= last; ++c) {
    auto it = s->second.find(c);
    if (it == s->second.end()) return false;
    out[c - first] = it->second;
  }
  return true;
}

void ReadMap::insert(SnapshotId id, uint64_t chunk, uint64_t store_chunk) {
  if (entries_.load(std::memory_order_relaxed) >= max_) return;
  std::unique_lock lock(mu_);
  auto [it, added] = map_[id].insert_or_assign(chunk, store_chunk);
  if (added) entries_.fetch_add(1, std::memory_order_relaxed);
}

void ReadMap::forget_chunk(uint64_t chunk) {
  bool removed = false;
  {
    std::unique_lock lock(mu_);
    for (auto& [id, chunks] : map_)
      if (chunks.erase(chunk) > 0) {
        entries_.fetch_sub(1, std::memory_order_relaxed);
        removed = true;
      }
  }
  if (removed) wait_for_readers();
}

void ReadMap::forget_snapshot(SnapshotId id) {
  std::unique_lock lock(mu_);
  auto it = map_.find(id);
  if (it == map_.end()) return;
  entries_.fetch_sub(it->second.size(), std::memory_order_relaxed);
  map_.erase(it);
}

void ReadMap::wait_for_readers() {
  // Readers that entered before the removal are in the old epoch's counter
  // (or re-enter the new one, where they cannot find what was removed).
  uint64_t old = epoch_.fetch_add(1);
  while (readers_[old & 1].load() != 0) std::this_thread::yield();
}

}  // namespace multisnap
