// TransactionManager: copy-on-write metadata transactions over the block
// cache and the two space maps (metadata blocks, data chunks).
//
// Invariants (multisnap check verifies 1-4 and 6 on disk; check_invariants(),
// called after every commit in debug builds, asserts the in-memory side of
// 2, 5 and 6: the open transaction is past the committed one, usage counters
// within the pools, a read-only or failed manager holds no changes, every
// borrowed chunk holds a block and nothing is pinned after a commit):
//  1. The store is described by the valid commit record with the highest
//     generation. Everything it references was durable before it was written
//     (commit: write dirty blocks, flush, write the record's two copies,
//     flush). Every record is kept twice, so one damaged block never loses
//     a commit; a newest record with both copies damaged is refused unless
//     the caller asks for the older one (TmOptions::use_older_commit).
//  2. A block written in transaction G carries generation G in its header.
//     The open transaction is generation committed+1; a block carrying it is
//     referenced by no commit, so it may be changed in place or written out
//     early (cache eviction). Any other block is committed and read-only.
//  3. A metadata block or data chunk freed in transaction G is not reused
//     before G commits (space_map.h).
//  4. Committed blocks are never overwritten: a change goes to a shadow copy
//     at a newly allocated block; bitmaps go to their other slot; the commit
//     record alternates between two slots.
//  5. After a failed write or flush the manager is failed: it refuses every
//     change and commit until the store is reopened (like SQLite's pager).
//  6. One space (format 3 on). Metadata blocks come from the pool first; when it
//     is full, from data chunks the metadata *borrowed*: a data chunk is
//     borrowed iff it is in use in the data bitmap and at least one of its
//     blocks is in use in the metadata bitmap (whose units run on over the
//     data area). Nothing else records it, so there is nothing to keep in
//     step. A chunk is borrowed in the transaction that first needs it
//     (reserve_meta borrows ahead, so a data allocation after a reservation
//     cannot take the blocks it counted on), and a commit hands every
//     borrowed chunk without a block in use back to the data space: freed in
//     that transaction, so by 3 it is reused only after the commit, when its
//     blocks are free in the committed metadata bitmap too.
//  7. A full host filesystem is a full store, not a failed one: a data
//     chunk is given out only after its bytes were preallocated on the
//     store file (BlockDevice::preallocate), so the copy and metadata writes
//     into it cannot fail for lack of space; the metadata region (up to
//     data_start, less the bitmaps kept as room to grow) is preallocated
//     when the store is opened read-write, and a grow preallocates the
//     bitmaps it brings into service before its commit.
//
// The store layer keeps its roots and counters in a 512-byte "store area"
// inside the commit record; this layer does not interpret it.
//
// Single-threaded.
#pragma once

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <set>

#include "meta/cache.h"
#include "meta/space_map.h"
#include "meta/superblock.h"

namespace multisnap {

struct TmOptions {
  size_t cache_bytes = 64ull << 20;
  bool read_only = false;
  // Open the older commit when both copies of what may be a newer one are
  // damaged (`serve --use-older-commit`). Without it such a store is refused.
  bool use_older_commit = false;
};

// What open found wrong with the commit records' copies. A damaged copy
// whose twin is intact loses nothing (and a power cut in the middle of a
// commit leaves one), so it is a warning; `serious` marks a commit that may
// be lost (both copies of a record that could be newer are damaged).
struct CommitRecordFinding {
  bool serious = false;
  std::string text;
};

struct CommitRecordDisk {
  BlockHeaderDisk header;  // generation = transaction id
  uint64_t commit_time_ns;
  uint32_t record_blocks;
  uint32_t bitmaps;  // meta bitmaps + data bitmaps, for sanity
  uint64_t meta_used;
  uint64_t data_used;
  uint64_t meta_cursor;
  uint64_t data_cursor;
  uint64_t meta_borrowed_chunks;  // data chunks holding metadata (format 3)
  uint64_t data_chunks;           // the data area's size now (format 4; 0 before)
  uint64_t store_size;            // bytes of the store device in use (format 4; 0 before)
  uint8_t reserved[24];
  uint8_t store_area[kStoreAreaSize];
  uint8_t selectors[kBlockSize - kCommitFirstSelectorOffset];
};
static_assert(sizeof(CommitRecordDisk) == kBlockSize);
static_assert(offsetof(CommitRecordDisk, meta_borrowed_chunks) == 80);
static_assert(offsetof(CommitRecordDisk, data_chunks) == 88);
static_assert(offsetof(CommitRecordDisk, store_size) == 96);
static_assert(offsetof(CommitRecordDisk, store_area) == kStoreAreaOffset);
static_assert(offsetof(CommitRecordDisk, selectors) == kCommitFirstSelectorOffset);

using StoreArea = std::array<uint8_t, kStoreAreaSize>;

class TransactionManager {
 public:
  // Writes the superblock and an empty first commit record (generation 1).
  static Status format(BlockDevice& dev, const Superblock& sb);
  static Result<std::unique_ptr<TransactionManager>> open(BlockDevice& dev, const TmOptions& options);

  const Superblock& superblock() const { return sb_; }
  const Layout& layout() const { return sb_.layout; }
  uint64_t generation() const { return generation_; }
  uint64_t committed_generation() const { return generation_ - 1; }
  bool read_only() const { return options_.read_only; }
  BlockCache& cache() { return *cache_; }
  SpaceMap& meta_space() { return *meta_; }
  SpaceMap& data_space() { return *data_; }
  BlockDevice& device() { return dev_; }

  // Reads a metadata block (validated).
  Result<BlockRef> read(uint64_t blocknr, BlockType type);
  // True when the block was written in the open transaction (writable).
  bool is_shadow(const BlockRef& block) const { return block.header().generation == generation_; }
  // Returns a writable version of `block`: itself if already a shadow, else
  // a copy at a newly allocated block (the original is freed). *moved tells
  // the caller to update the pointer it followed.
  Result<BlockRef> shadow(const BlockRef& block, bool* moved);
  Result<BlockRef> new_block(BlockType type);
  Status free_block(uint64_t blocknr);
  Result<uint64_t> allocate_chunk();
  Status free_chunk(uint64_t chunk);
  // Fails with kNoSpace unless `blocks` metadata blocks could be allocated
  // now: a store operation checks this first so it never stops half way.
  // In a format-3 store it borrows data chunks to make the room, so it fails
  // only when the whole store is full.
  // keep_delete_reserve: also refuse when what is left afterwards would be
  // below the delete reserve (a store operation's first reservation).
  Status reserve_meta(uint64_t blocks, bool keep_delete_reserve = false);

  // Format 4: takes the data area to `chunks` (more than now, at most
  // layout().capacity_chunks()) and the store's size to `store_bytes`, in
  // the open transaction: the next commit makes both durable at once, so a
  // crash leaves the old size or the new one. The caller has made the device
  // that big, durably, first (the record must never point past its end).
  Status grow(uint64_t chunks, uint64_t store_bytes);

  // True for a block a metadata pointer may name: the pool, or (format 3)
  // the data area.
  bool in_meta_space(uint64_t blocknr) const;
  // Data chunks the metadata holds now (working state) and at the last commit.
  uint64_t borrowed_chunks() const { return borrowed_.size(); }
  uint64_t committed_borrowed_chunks() const { return committed_borrowed_; }
  // Metadata blocks in use in the pool and in borrowed chunks.
  uint64_t meta_pool_used() const { return meta_->used() - borrowed_used_; }
  uint64_t meta_borrowed_used() const { return borrowed_used_; }
  // A format-3 store keeps delete_reserve_blocks() of room (metadata blocks
  // allocatable now plus free data chunks, in blocks) that only snapshot
  // deletes and reclaim may use (inside a DeleteReserve scope): a delete
  // shadows tree nodes, so a store filled to its last block could otherwise
  // never be emptied. Ordinary updates check it when they start (a store
  // operation's reserve_meta with keep_delete_reserve, each data chunk), so
  // one update may dip into it by what it reserved; the size allows for that.
  // 1/32 of the store's blocks, from 64 (256 KiB, a delete and a reclaim
  // step of a small store) to 256 (1 MiB).
  uint64_t delete_reserve_blocks() const {
    if (!sb_.layout.shared_space()) return 0;
    return std::clamp<uint64_t>(sb_.layout.store_size / 4096 / 32, 64, 256);
  }
  // Metadata blocks allocatable now plus free data chunks in blocks.
  uint64_t room_blocks() const { return meta_available() + data_available() * sb_.layout.chunk_blocks(); }
  class DeleteReserve {
   public:
    explicit DeleteReserve(TransactionManager& tm) : tm_(tm) { ++tm_.delete_reserve_users_; }
    ~DeleteReserve() { --tm_.delete_reserve_users_; }
    DeleteReserve(const DeleteReserve&) = delete;
    DeleteReserve& operator=(const DeleteReserve&) = delete;

   private:
    TransactionManager& tm_;
  };
  // Metadata blocks allocatable now without borrowing (pool + borrowed chunks).
  uint64_t meta_available() const;
  // Data chunks allocatable now (not counting those freed in this transaction).
  uint64_t data_available() const;

  const StoreArea& store_area() const { return area_; }
  StoreArea& mutable_store_area();
  const StoreArea& committed_store_area() const { return committed_area_; }

  bool has_changes() const { return changed_ || meta_->dirty() || data_->dirty(); }
  Status commit();
  // ok, or the error that failed the manager.
  const Status& status() const { return failure_; }
  Status fail(Status why);

  // Damaged or stale commit record copies seen by open (empty when all is well).
  const std::vector<CommitRecordFinding>& commit_findings() const { return findings_; }
  // Rewrites damaged copies of the newest commit record from the intact one
  // (serve does this at open; read-write only). Returns how many it rewrote.
  Result<int> repair_commit_copies();

  void check_invariants() const;

 private:
  TransactionManager(BlockDevice& dev, Superblock sb, TmOptions options);
  Status load_commit_record();
  Result<uint64_t> read_copy(int slot, int copy, std::vector<uint8_t>* out);
  Status write_copy(int slot, int copy, std::vector<uint8_t> record);
  Status writable() const;
  bool in_meta_pool(uint64_t blocknr) const;
  Status borrow_chunk();
  Result<uint64_t> allocate_borrowed();
  Status load_borrowed();
  // Invariant 7 for the metadata region in service (transaction.cc).
  Status preallocate_metadata();
  // The data area in service (larger than now): layout and space maps.
  void set_size(uint64_t chunks, uint64_t store_bytes);
  // Format 4: the data area's size from the commit record.
  Status load_size(const CommitRecordDisk& record);
  Status release_empty_chunks();
  void unpin_borrowed();

  // Invariant 6: per borrowed chunk, its blocks in use (working bitmap) and
  // those freed in this transaction that were in use at the last commit.
  struct Borrowed {
    uint32_t used = 0;
    uint32_t pinned = 0;
  };
  uint32_t avail(const Borrowed& b) const {
    return static_cast<uint32_t>(sb_.layout.chunk_blocks()) - b.used - b.pinned;
  }
  std::map<uint64_t, Borrowed> borrowed_;
  std::set<uint64_t> open_chunks_;   // borrowed chunks with an allocatable block
  std::set<uint64_t> maybe_empty_;   // borrowed, or emptied, in this transaction
  std::set<uint64_t> pinned_chunks_;
  uint64_t borrowed_used_ = 0, borrowed_pinned_ = 0, borrowed_avail_ = 0;
  uint64_t committed_borrowed_ = 0;
  int delete_reserve_users_ = 0;
  // kNoSpace when using `blocks` more would leave less than the delete
  // reserve (outside a DeleteReserve scope).
  Status check_delete_reserve(const char* what, uint64_t blocks) const;
  // Invariant 7: a data chunk is given out (to data or to metadata) only
  // once its bytes are preallocated on the host filesystem, in groups of
  // kPreallocGroupBytes remembered here (per process: at most one
  // fallocate per group per run); kNoSpace when the filesystem is full.
  static constexpr uint64_t kPreallocGroupBytes = 16ull << 20;
  Status ensure_backed(uint64_t chunk);
  Result<uint64_t> allocate_backed_chunk();
  std::vector<bool> prealloc_done_;

  BlockDevice& dev_;
  Superblock sb_;
  TmOptions options_;
  std::unique_ptr<BlockCache> cache_;
  std::unique_ptr<SpaceMap> meta_;
  std::unique_ptr<SpaceMap> data_;
  uint64_t generation_ = 0;
  StoreArea area_{};
  StoreArea committed_area_{};
  bool changed_ = false;
  Status failure_;
  std::vector<CommitRecordFinding> findings_;
  std::vector<uint8_t> newest_record_;  // as read at open, for repair
  int newest_slot_ = 0;
};

}  // namespace multisnap
