// TransactionManager: copy-on-write metadata transactions over the block
// cache and the two space maps (metadata blocks, data chunks).
//
// Invariants (multisnap check verifies 1-4 on disk; check_invariants(),
// called after every commit in debug builds, asserts the in-memory side of
// 2 and 5: the open transaction is past the committed one, usage counters
// within the pools, a read-only or failed manager holds no changes):
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
//
// The store layer keeps its roots and counters in a 512-byte "store area"
// inside the commit record; this layer does not interpret it.
//
// Single-threaded.
#pragma once

#include <array>
#include <memory>

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
  uint8_t reserved[48];
  uint8_t store_area[kStoreAreaSize];
  uint8_t selectors[kBlockSize - kCommitFirstSelectorOffset];
};
static_assert(sizeof(CommitRecordDisk) == kBlockSize);
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
  Status reserve_meta(uint64_t blocks);

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
