// RangeStore: Mikulas Patocka's exception store. One B+tree maps
// (origin chunk, first key, last key) to the store chunk holding that
// chunk's preserved contents for every live snapshot whose key lies in the
// range. One entry covers any number of snapshots, so an origin write costs
// the same with 1 or 1,000,000 snapshots.
//
// Snapshot keys (64 bits, never reused): a snapshot of the origin with ID u
// has key u<<32. A snapshot of snapshot u is made in u's key block, from the
// top down: its first child has key (u<<32)|0xffffffff, the next ...fffe, and
// so on. So u together with its *future* children is always the contiguous
// block (u<<32) .. (u<<32)|(0xffffffff - children), its "atom", and each
// existing child is an atom of its own. Every entry's range starts and ends
// on atom boundaries (invariant R3), which is what lets one entry go on
// serving u's future children, and what keeps snapshot-of-snapshot O(1).
// One level only, as in the seed: a snapshot of a child is refused.
//
// Invariants (multisnap check verifies them):
//  R1. Entries of one chunk do not overlap; from <= to <= (next_id<<32)-1.
//  R2. Every store chunk is referenced by exactly one entry and is allocated;
//      every allocated chunk is referenced (no leak). Zero entries have no chunk.
//  R3. Entry boundaries fall on atom boundaries.
//  R4. The live-key tree holds exactly the keys of the snapshot table.
//  R5. Outside a reclaim pass, every entry's range holds a live key.
//
// Store area, bytes 64..: u64 exceptions root, u64 live-keys root,
// u64 exception count, u64 reclaim cursor chunk, u64 reclaim cursor key,
// u32 reclaim flags (1 active, 2 another pass wanted).
#pragma once

#include "store/store_base.h"

namespace multisnap {

// The range store's part of the store area (bytes 64..511; docs/format.md,
// section 7).
struct RangeStoreAreaDisk {
  uint64_t exceptions_root;
  uint64_t live_root;          // the live-keys tree
  uint64_t exception_count;
  uint64_t reclaim_chunk;      // reclaim cursor: origin chunk
  uint64_t reclaim_key;        // reclaim cursor: first key
  uint32_t reclaim_flags;      // 1: a pass is running; 2: another pass is wanted
  uint8_t reserved[404];       // 0
};
static_assert(sizeof(RangeStoreAreaDisk) == kStoreAreaSpecificSize);
static_assert(kStoreAreaSpecificOffset + offsetof(RangeStoreAreaDisk, live_root) == 72);
static_assert(kStoreAreaSpecificOffset + offsetof(RangeStoreAreaDisk, exception_count) == 80);
static_assert(kStoreAreaSpecificOffset + offsetof(RangeStoreAreaDisk, reclaim_chunk) == 88);
static_assert(kStoreAreaSpecificOffset + offsetof(RangeStoreAreaDisk, reclaim_key) == 96);
static_assert(kStoreAreaSpecificOffset + offsetof(RangeStoreAreaDisk, reclaim_flags) == 104);
static_assert(kStoreAreaSpecificOffset + offsetof(RangeStoreAreaDisk, reserved) == 108);

struct RangeValue {
  uint64_t to = 0;
  uint64_t store_chunk = 0;  // kZeroChunk: reads as zeros, no chunk
  void encode(uint8_t* p) const {
    store_le(p, to);
    store_le(p + 8, store_chunk);
  }
  static RangeValue decode(const uint8_t* p) { return {load_le<uint64_t>(p), load_le<uint64_t>(p + 8)}; }
};
constexpr uint64_t kZeroChunk = UINT64_MAX;
using RangeExceptionTraits = PairKeyTraits<tree_kind::kRangeExceptions, RangeValue, 16>;
using LiveKeyTraits = U64Traits<tree_kind::kLiveKeys>;

class RangeStore final : public StoreBase {
 public:
  static Result<std::unique_ptr<RangeStore>> create(std::unique_ptr<TransactionManager> tm);
  static Result<std::unique_ptr<RangeStore>> open(std::unique_ptr<TransactionManager> tm);

  Result<ChunkMapping> lookup(uint64_t chunk, const SnapshotInfo& snap, bool want_exclusive) override;
  Status diff(const SnapshotInfo& a, const SnapshotInfo* b, uint64_t from,
              const std::function<bool(uint64_t chunk)>& fn) override;
  void reset_query(uint64_t chunk) override;
  Result<bool> query_next_remap() override;
  Result<uint64_t> add_next_remap(CopyDescriptor* descriptor, bool zero = false) override;
  Result<CopyPlan> make_chunk_writeable(uint64_t chunk, const SnapshotInfo& snap) override;
  Result<CopyPlan> zero_chunk(uint64_t chunk, const SnapshotInfo& snap) override;
  bool conflicts(const CopyDescriptor& d, const SnapshotInfo& snap) const override;
  bool reclaim_pending() const override { return reclaim_flags_ & kReclaimActive; }
  Status reclaim_step(uint32_t budget) override;
  StoreStats stats() override;
  Result<std::unique_ptr<SpaceScan>> start_space_scan() override;
  Status dump(const std::function<bool(const DumpEntry&)>& fn) override;
  void check(CheckReport& report) override;

  uint64_t exception_count() const { return exception_count_; }
  // "5" for snapshot 5's key, "5.2" for the key of its second child.
  static std::string key_string(uint64_t key);
  // "1..3" for whole families 1 to 3, else key_string(lo)..key_string(hi).
  static std::string range_string(uint64_t lo, uint64_t hi);

 protected:
  Result<uint64_t> allocate_key(SnapshotRecord* parent) override;
  Status on_created(const SnapshotInfo& info) override;
  Status on_deleted(const SnapshotInfo& info) override;
  void save_specific(uint8_t* area) override;

 private:
  friend class RangeSpaceScan;
  using ExceptionTree = BTree<RangeExceptionTraits>;
  using LiveTree = BTree<LiveKeyTraits>;
  using Entry = ExceptionTree::Entry;
  struct Range {
    uint64_t lo, hi;
  };
  static constexpr uint32_t kReclaimActive = 1;
  static constexpr uint32_t kReclaimAgain = 2;

  explicit RangeStore(std::unique_ptr<TransactionManager> tm) : StoreBase(std::move(tm)) {}
  void load_specific();
  uint64_t key_cap() const { return (uint64_t{next_id_} << 32) - 1; }
  Result<Range> atom_of(const SnapshotInfo& snap);
  Result<std::optional<Entry>> covering(uint64_t chunk, uint64_t key);
  Result<std::optional<uint64_t>> first_live(uint64_t lo, uint64_t hi);
  Result<std::optional<uint64_t>> last_live(uint64_t lo, uint64_t hi);
  Result<bool> only_live(uint64_t lo, uint64_t hi, uint64_t key);
  Status put(uint64_t chunk, uint64_t from, uint64_t to, uint64_t store_chunk);
  Status erase(uint64_t chunk, uint64_t from);
  // Cutting `atom` out of entry `e` (which covers it and is shared): the
  // parts left and right of it that still serve live snapshots keep e's
  // data, one in e's chunk and the other (if both exist) in a new chunk.
  struct Carve {
    std::optional<Range> left, right;  // the parts that still serve live snapshots
    bool copy_right = false;           // the right part needs a chunk of its own
  };
  Result<Carve> plan_carve(const Entry& e, Range atom);
  // Applies a plan (the atom is left uncovered); right_chunk if copy_right.
  Status apply_carve(uint64_t chunk, const Entry& e, const Carve& c, uint64_t right_chunk);

  uint64_t exceptions_root_ = 0;
  uint64_t live_root_ = 0;
  uint64_t exception_count_ = 0;
  PairKey reclaim_cursor_{};
  uint32_t reclaim_flags_ = 0;

  // Origin-write query state.
  uint64_t q_chunk_ = 0;
  uint64_t q_next_ = 0;
  bool q_done_ = true;
  Range q_found_{};
};

}  // namespace multisnap
