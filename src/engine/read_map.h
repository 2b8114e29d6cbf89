// ReadMap: where chunks of snapshots live in the store, so that snapshot
// reads of them can be served on the caller's thread (a pread of the store
// device) instead of queueing behind the engine thread's copies and commits.
//
// The engine thread fills it from the reads it serves (a chunk of snapshot S
// that is in the store, or zeroed, with no copy job on it), and empties it
// before anything could change such a mapping or free the store chunk:
//  * forget_chunk(c) before make_chunk_writeable or zero_chunk of chunk c
//    for any snapshot (writing a snapshot may move *other* snapshots that
//    shared its store chunk to a new one, the range store's carve);
//  * forget_snapshot(S) when S is deleted (nobody has it open then).
// After a store failure the shortcut is not taken at all (the engine's
// store_failed_ mirror), so nothing needs forgetting then.
// Nothing else moves a snapshot's data once it is in the store: origin
// writes only turn origin mappings into store or zero mappings (never
// cached), reclaim only frees chunks of deleted snapshots, and a store
// chunk a live snapshot reads is never freed.
//
// Readers and forgetting: a reader enters the current epoch (one of two
// counters), looks up and reads, and leaves. forget_*() removes entries
// under the lock, advances the epoch and waits until every reader that
// entered before that has left; readers entering later cannot find the
// removed entries. A reader re-checks the epoch after entering (the
// Dekker-style handshake of EngineCore::try_direct_write), so waiting is
// bounded by the reads already in flight, never by new ones.
//
// Memory is bounded by max_entries (about 48 bytes each); when full, new
// mappings are simply not remembered (those reads take the engine's path).
#pragma once

#include <atomic>
#include <cstdint>
#include <shared_mutex>
#include <unordered_map>

#include "store/exception_store.h"

namespace multisnap {

class ReadMap {
 public:
  static constexpr uint64_t kZeros = UINT64_MAX;  // the chunk reads as zeros

  explicit ReadMap(size_t max_entries) : max_(max_entries) {}
  ReadMap(const ReadMap&) = delete;
  ReadMap& operator=(const ReadMap&) = delete;

  bool enabled() const { return max_ > 0; }

  // ---- any thread: a reader holds an epoch while it looks up and reads.
  uint64_t enter();
  void leave(uint64_t epoch) { readers_[epoch & 1].fetch_sub(1); }
  // The store chunks (or kZeros) of chunks first..last of snapshot `id`
  // into out[0..], all or nothing, under one lock.
  bool find_run(SnapshotId id, uint64_t first, uint64_t last, uint64_t* out) const;

  // ---- engine thread only.
  void insert(SnapshotId id, uint64_t chunk, uint64_t store_chunk);
  void forget_chunk(uint64_t chunk);
  void forget_snapshot(SnapshotId id);
  size_t entries() const { return entries_.load(std::memory_order_relaxed); }

 private:
  void wait_for_readers();

  const size_t max_;
  mutable std::shared_mutex mu_;
  std::unordered_map<SnapshotId, std::unordered_map<uint64_t, uint64_t>> map_;  // guarded by mu_
  std::atomic<size_t> entries_{0};
  std::atomic<uint64_t> epoch_{0};
  std::atomic<uint64_t> readers_[2] = {0, 0};
};

}  // namespace multisnap
