// BlockCache: the bounded cache every metadata block passes through.
//
// Capacity is a byte budget set by the user (serve --cache-size); memory for
// metadata never grows past it except by the blocks pinned at one moment
// (a B-tree path or two: a few dozen). Blocks are read and validated on a
// miss (block.h), sealed (checksummed) when written. Unpinned blocks are
// evicted least-recently-used first; a dirty block is written out before it
// is evicted, which is safe because dirty blocks are always uncommitted
// copies at locations the last commit does not reference (invariant 2 in
// transaction.h).
//
// Single-threaded: owned by the engine thread (or an offline tool).
#pragma once

#include <list>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "io/block_device.h"
#include "meta/block.h"

namespace multisnap {

class BlockCache;

struct CachedBlock {
  uint64_t blocknr = 0;
  uint8_t* data = nullptr;  // kBlockSize bytes, 4 KiB aligned
  uint32_t pins = 0;
  bool dirty = false;
  std::list<CachedBlock*>::iterator lru;  // valid when pins == 0
};

// A pinned block. While a BlockRef exists its block stays in memory.
class BlockRef {
 public:
  BlockRef() = default;
  BlockRef(BlockCache* cache, CachedBlock* block);
  BlockRef(const BlockRef& other);
  BlockRef& operator=(const BlockRef& other);
  BlockRef(BlockRef&& other) noexcept;
  BlockRef& operator=(BlockRef&& other) noexcept;
  ~BlockRef();

  explicit operator bool() const { return block_ != nullptr; }
  uint64_t blocknr() const { return block_->blocknr; }
  const uint8_t* data() const { return block_->data; }
  // Marks the block dirty and returns it for writing. Only for blocks the
  // transaction manager says are writable in this transaction.
  uint8_t* mutable_data();
  const BlockHeaderDisk& header() const { return *block_header(block_->data); }
  void reset();

 private:
  BlockCache* cache_ = nullptr;
  CachedBlock* block_ = nullptr;
};

struct CacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t writebacks = 0;  // dirty blocks written to make room
  uint64_t blocks = 0;      // blocks held now
  uint64_t dirty = 0;
  uint64_t capacity_blocks = 0;
};

class BlockCache {
 public:
  BlockCache(BlockDevice& dev, size_t capacity_bytes, uint64_t seed);
  ~BlockCache();
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // Returns the block, reading and validating it on a miss.
  Result<BlockRef> read(uint64_t blocknr, BlockType type, uint64_t max_generation);
  // Returns a zeroed, dirty block for `blocknr` without reading the device
  // (its old contents, cached or not, are discarded).
  Result<BlockRef> create(uint64_t blocknr);
  // Drops a block from the cache without writing it (it was freed).
  void forget(uint64_t blocknr);
  // Writes every dirty block (sealed), in block order.
  Status write_dirty();
  // Drops every unpinned block (clean or dirty: used after a failure).
  void clear();

  bool contains(uint64_t blocknr) const { return map_.count(blocknr) != 0; }
  CacheStats stats() const;
  size_t capacity_blocks() const { return capacity_; }

 private:
  friend class BlockRef;
  void pin(CachedBlock* b);
  void unpin(CachedBlock* b);
  void mark_dirty(CachedBlock* b);
  Result<CachedBlock*> allocate_slot(uint64_t blocknr);
  Status make_room();
  Status write_block(CachedBlock* b);
  void release(CachedBlock* b);

  BlockDevice& dev_;
  size_t capacity_;
  uint64_t seed_;
  std::unordered_map<uint64_t, CachedBlock*> map_;
  std::list<CachedBlock*> lru_;  // unpinned blocks, least recently used first
  uint8_t* new_buffer();
  std::vector<uint8_t*> free_buffers_;
  std::vector<uint8_t*> slabs_;  // block buffers come from 1 MiB slabs, no per-block overhead
  std::unordered_set<CachedBlock*> dirty_;  // so a commit need not scan the cache
  CacheStats stats_;
};

}  // namespace multisnap
