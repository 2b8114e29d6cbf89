// SpaceMap: which metadata blocks, or which data chunks, are in use.
//
// One bit per unit in bitmap blocks at fixed places in the store. Each bitmap
// block has two slots on disk ("ping-pong"); the commit record says, for
// each bitmap, which slot holds its committed version (or that it was never
// written: all free). A transaction that changes a bitmap writes the other
// slot, so the committed version is never overwritten, and the space map
// needs no allocation of its own (no recursion through the B-trees).
//
// Deferred frees come free with this: a unit may be allocated only if it is
// clear in the working bitmap AND in the committed one, so a unit freed in
// this transaction is not reused until the transaction commits (invariant 3
// in transaction.h).
//
// Memory: 2 bits of state per bitmap block (each covers 32,512 units), plus
// the cache. Single-threaded.
//
// The metadata space map of a format-3 store covers every block from the
// metadata pool to the end of the data area: allocate() searches only the
// pool (the first `alloc_units` units); blocks inside data chunks that the
// metadata borrowed are taken with allocate_in() (transaction.h says which).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "meta/cache.h"
#include "meta/superblock.h"

namespace multisnap {

class SpaceMap {
 public:
  // `first_bitmap_block`: block of bitmap 0's slot 0; bitmap i slot s is at
  // first_bitmap_block + 2*i + s.
  // `alloc_units`: allocate() only gives out units below it (<= units).
  SpaceMap(BlockCache& cache, std::string name, uint64_t units, uint64_t alloc_units,
           uint64_t first_bitmap_block, uint32_t bitmaps, const uint64_t* generation);

  // Grows the units tracked (within the bitmaps' reach): the bits past the
  // old last unit are 0 on disk (never used), so they join as free units.
  void grow(uint64_t units, uint64_t alloc_units);
  // Undoes a grow in the same transaction before any new unit was taken.
  void shrink_to(uint64_t units) {
    units_ = units;
    frontier_ = std::min(frontier_, units_);
    alloc_units_ = std::min(alloc_units_, units_);
    if (cursor_ >= alloc_units_) cursor_ = 0;
  }
  // State from the commit record: 2 bits per bitmap (bit 0 slot, bit 1 written).
  void load(const std::vector<uint8_t>& states, uint64_t used, uint64_t cursor);
  // The states as the commit being written will have them.
  std::vector<uint8_t> next_states() const;
  // After the commit record is durable.
  void commit_done();

  // A unit below alloc_units, free in this transaction and at the last commit.
  // Next-fit from a cursor; with use_frontier(), within the frontier first.
  Result<uint64_t> allocate();
  // The data space's policy: a store file stays as sparse as its peak use.
  // The *frontier* is one past the highest unit ever taken (since open: then
  // the highest in use). allocate() searches below it while the counters say
  // a unit there is allocatable (frontier - used - freed this transaction),
  // and takes units past it only when none is. Without it the next-fit
  // cursor sweeps the whole space under churn (metadata borrowing and
  // returning chunks, copies freed by reclaim), and every unit it passes
  // gets its bytes preallocated on the host filesystem (transaction.h
  // invariant 7): a sparse store file ended up allocated in full while a
  // few percent of it was in use.
  void use_frontier() { frontier_policy_ = true; }
  uint64_t frontier() const { return frontier_; }
  // The same within [first, first + count); UINT64_MAX when none is free.
  Result<uint64_t> allocate_in(uint64_t first, uint64_t count);
  // *pinned (if given) is set when the unit was in use at the last commit,
  // so it stays unusable until this transaction commits.
  Status free(uint64_t unit, bool* pinned = nullptr);
  Result<bool> is_allocated(uint64_t unit);            // in this transaction
  Result<bool> is_allocated_committed(uint64_t unit);  // at the last commit
  // Bits set at or past `units` in the committed bitmaps (always 0 in a
  // sound store: a grow turns them into free units). For check and grow.
  Result<uint64_t> committed_bits_past_end();
  // Bitmaps that hold units now (the rest are room to grow).
  uint32_t bitmaps_in_service() const {
    return static_cast<uint32_t>(std::min<uint64_t>(bitmaps_, (units_ + kBitsPerBitmap - 1) / kBitsPerBitmap));
  }
  // Every unit's committed bit, for check (memory: one bit per unit).
  Result<std::vector<bool>> committed_bits();
  // Calls fn(unit) for every unit at or above `from` in use at the last
  // commit, reading only bitmaps that were ever written.
  Status for_each_committed(uint64_t from, const std::function<void(uint64_t)>& fn);

  uint64_t used() const { return used_; }
  uint64_t total() const { return units_; }
  uint64_t cursor() const { return cursor_; }
  uint64_t alloc_units() const { return alloc_units_; }
  // Units freed in this transaction that were in use at the last commit:
  // free in the working bitmap but not allocatable before the commit.
  uint64_t freed_this_transaction() const { return freed_; }
  // True when a bitmap was changed in this transaction.
  bool dirty() const { return dirty_count_ > 0; }
  uint32_t bitmaps() const { return bitmaps_; }
  uint64_t bitmap_block(uint32_t i, int slot) const { return first_ + 2ull * i + slot; }
  bool bitmap_written(uint32_t i) const { return state(i) & 2; }
  int committed_slot(uint32_t i) const { return state(i) & 1; }

 private:
  uint8_t state(uint32_t i) const { return (states_[i / 4] >> ((i % 4) * 2)) & 3; }
  void set_state(std::vector<uint8_t>& v, uint32_t i, uint8_t s) const;
  // The committed version of bitmap i (only when bitmap_written(i)).
  Result<BlockRef> committed_block(uint32_t i);
  // The working (writable) version of bitmap i, copied from the committed one
  // into the other slot the first time this transaction touches it.
  Result<BlockRef> working_block(uint32_t i, bool for_write);
  // First unit of bitmap i at or after from_bit and below limit_bit that is
  // free in both versions; UINT64_MAX if none.
  Result<uint64_t> find_free_in(uint32_t i, uint64_t from_bit, uint64_t limit_bit);
  Status take(uint32_t i, uint64_t unit);
  // Next-fit over [0, limit) from the cursor (wrapping); UINT64_MAX if none.
  Result<uint64_t> next_fit(uint64_t limit);
  // One past the highest unit in use now or at the last commit (0 if none).
  Result<uint64_t> used_end();
  Status validate_unit(uint64_t unit) const;

  BlockCache& cache_;
  std::string name_;
  uint64_t units_;
  uint64_t alloc_units_;
  uint64_t first_;
  uint32_t bitmaps_;
  const uint64_t* generation_;
  std::vector<uint8_t> states_;
  std::vector<bool> dirty_;      // bitmap written in this transaction
  uint32_t dirty_count_ = 0;     // of them set (dirty() is asked at every engine step)
  std::vector<bool> full_hint_;  // no free unit seen at last scan
  uint64_t used_ = 0;
  uint64_t cursor_ = 0;
  uint64_t freed_ = 0;
  bool frontier_policy_ = false;
  bool frontier_known_ = false;  // computed at the first allocate() after load()
  uint64_t frontier_ = 0;
};

}  // namespace multisnap
