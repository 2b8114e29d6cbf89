// BitmaskStore: the exception store of Daniel Phillips' Zumastor (ddsnapd),
// as Fujita ported it to the kernel, made crash-safe on multisnap's
// copy-on-write metadata.
//
// Every live snapshot owns one bit of a 64-bit mask (its store key). For
// each origin chunk the store keeps a list of exceptions, each a store chunk
// and the mask of the snapshots that read the chunk from it; a snapshot whose
// bit is in no exception of the chunk reads the origin. So:
//  * an origin write needs at most one copy: the new exception's mask is
//    every live snapshot not yet in an exception of the chunk;
//  * a snapshot write to a shared exception clears its bit there and gives
//    it an exception of its own (a copy of the shared chunk);
//  * at most 64 snapshots are live (or being reclaimed) at once.
//
// B-tree 'BXCP': key (origin chunk, store chunk) -> value mask; the entries
// of one chunk are its exception list. Store chunk kZeroChunk is the chunk's
// zero exception: its snapshots read zeros.
//
// Deleting a snapshot drops its bit from the live mask at once. A
// background sweep then clears the bit in every exception (freeing those
// left with no bit) in committed steps whose cursor survives a restart; the
// bit becomes free for a new snapshot only when the sweep that cleared it
// has committed, so a new snapshot never sees an old one's data.
//
// Snapshots of snapshots are refused: a new bit would have to be added to
// every exception of the parent, which is not O(1).
//
// Invariants (multisnap check verifies them):
//  B1. In one chunk's exceptions every bit appears at most once.
//  B2. Every exception's mask is non-zero and within live | sweep | pending.
//  B3. Every store chunk is referenced once and allocated; no leaks.
//  B4. The snapshot table's keys are distinct bits, exactly the live mask.
//
// Store area, bytes 64..: u64 exceptions root, u64 exception count,
// u64 live mask, u64 sweep mask (bits being cleared by the running pass),
// u64 pending mask (deleted since the pass began), u64 sweep cursor chunk,
// u64 sweep cursor store chunk.
#pragma once

#include "store/store_base.h"

namespace multisnap {

// The bitmask store's part of the store area (bytes 64..511;
// docs/format.md, section 7).
struct BitmaskStoreAreaDisk {
  uint64_t exceptions_root;
  uint64_t exception_count;
  uint64_t live_mask;          // the bits of live snapshots
  uint64_t sweep_mask;         // bits of deleted snapshots the running pass is clearing
  uint64_t pending_mask;       // bits of snapshots deleted since that pass started
  uint64_t sweep_chunk;        // sweep cursor: origin chunk
  uint64_t sweep_store_chunk;  // sweep cursor: store chunk
  uint8_t reserved[392];       // 0
};
static_assert(sizeof(BitmaskStoreAreaDisk) == kStoreAreaSpecificSize);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, exception_count) == 72);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, live_mask) == 80);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, sweep_mask) == 88);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, pending_mask) == 96);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, sweep_chunk) == 104);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, sweep_store_chunk) == 112);
static_assert(kStoreAreaSpecificOffset + offsetof(BitmaskStoreAreaDisk, reserved) == 120);

struct MaskValue {
  uint64_t mask = 0;
  void encode(uint8_t* p) const { store_le(p, mask); }
  static MaskValue decode(const uint8_t* p) { return {load_le<uint64_t>(p)}; }
};
using BitmaskExceptionTraits = PairKeyTraits<tree_kind::kBitmaskExceptions, MaskValue, 8>;

class BitmaskStore final : public StoreBase {
 public:
  static constexpr uint64_t kZeroChunk = UINT64_MAX;
  static constexpr int kMaxSnapshots = 64;

  static Result<std::unique_ptr<BitmaskStore>> create(std::unique_ptr<TransactionManager> tm);
  static Result<std::unique_ptr<BitmaskStore>> open(std::unique_ptr<TransactionManager> tm);

  Result<ChunkMapping> lookup(uint64_t chunk, const SnapshotInfo& snap, bool want_exclusive) override;
  Status diff(const SnapshotInfo& a, const SnapshotInfo* b, uint64_t from,
              const std::function<bool(uint64_t chunk)>& fn) override;
  void reset_query(uint64_t chunk) override;
  Result<bool> query_next_remap() override;
  Result<uint64_t> add_next_remap(CopyDescriptor* descriptor, bool zero = false) override;
  Result<CopyPlan> make_chunk_writeable(uint64_t chunk, const SnapshotInfo& snap) override;
  Result<CopyPlan> zero_chunk(uint64_t chunk, const SnapshotInfo& snap) override;
  bool conflicts(const CopyDescriptor& d, const SnapshotInfo& snap) const override;
  bool reclaim_pending() const override { return sweep_ != 0; }
  Status reclaim_step(uint32_t budget) override;
  StoreStats stats() override;
  Result<std::unique_ptr<SpaceScan>> start_space_scan() override;
  Status dump(const std::function<bool(const DumpEntry&)>& fn) override;
  void check(CheckReport& report) override;

 protected:
  Result<uint64_t> allocate_key(SnapshotRecord* parent) override;
  Status on_created(const SnapshotInfo& info) override;
  Status on_deleted(const SnapshotInfo& info) override;
  void save_specific(uint8_t* area) override;

 private:
  friend class BitmaskSpaceScan;
  using ExceptionTree = BTree<BitmaskExceptionTraits>;
  struct Exception {
    uint64_t store_chunk;
    uint64_t mask;
  };

  explicit BitmaskStore(std::unique_ptr<TransactionManager> tm) : StoreBase(std::move(tm)) {}
  void load_specific();
  static uint64_t bit(const SnapshotInfo& s) { return uint64_t{1} << s.store_key; }
  // The chunk's exception list (at most 65 entries).
  Result<std::vector<Exception>> exceptions_of(uint64_t chunk);
  Status put(uint64_t chunk, uint64_t store_chunk, uint64_t mask);
  Status erase(uint64_t chunk, uint64_t store_chunk);
  // Removes `b` from exception e; drops e (and frees its chunk) when no
  // snapshot is left in it.
  Status remove_bit(uint64_t chunk, const Exception& e, uint64_t b);
  std::string mask_string(uint64_t mask) const;

  uint64_t exceptions_root_ = 0;
  uint64_t exception_count_ = 0;
  uint64_t live_ = 0;
  uint64_t sweep_ = 0;
  uint64_t pending_ = 0;
  PairKey cursor_{};

  uint64_t q_chunk_ = 0;
  bool q_done_ = true;
  uint64_t q_needed_ = 0;
};

}  // namespace multisnap
