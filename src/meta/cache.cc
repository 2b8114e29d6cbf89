#include "meta/cache.h"

#include <algorithm>
#include <cassert>
#include <cstdlib>
#include <cstring>

namespace multisnap {

BlockRef::BlockRef(BlockCache* cache, CachedBlock* block) : cache_(cache), block_(block) {
  cache_->pin(block_);
}
BlockRef::BlockRef(const BlockRef& o) : cache_(o.cache_), block_(o.block_) {
  if (block_) cache_->pin(block_);
}
BlockRef& BlockRef::operator=(const BlockRef& o) {
  if (this != &o) {
    reset();
    cache_ = o.cache_;
    block_ = o.block_;
    if (block_) cache_->pin(block_);
  }
  return *this;
}
BlockRef::BlockRef(BlockRef&& o) noexcept : cache_(o.cache_), block_(o.block_) {
  o.block_ = nullptr;
}
BlockRef& BlockRef::operator=(BlockRef&& o) noexcept {
  if (this != &o) {
    reset();
    cache_ = o.cache_;
    block_ = o.block_;
    o.block_ = nullptr;
  }
  return *this;
}
BlockRef::~BlockRef() { reset(); }
void BlockRef::reset() {
  if (block_) cache_->unpin(block_);
  block_ = nullptr;
}
uint8_t* BlockRef::mutable_data() {
  cache_->mark_dirty(block_);
  return block_->data;
}

BlockCache::BlockCache(BlockDevice& dev, size_t capacity_bytes, uint64_t seed)
    : dev_(dev), capacity_(std::max<size_t>(16, capacity_bytes / kBlockSize)), seed_(seed) {
  stats_.capacity_blocks = capacity_;
}

BlockCache::~BlockCache() {
  for (auto& [nr, b] : map_) delete b;
  for (uint8_t* p : slabs_) std::free(p);
}

uint8_t* BlockCache::new_buffer() {
  if (free_buffers_.empty()) {
    constexpr size_t kSlabBlocks = 256;
    auto* slab = static_cast<uint8_t*>(std::aligned_alloc(kBlockSize, kSlabBlocks * kBlockSize));
    slabs_.push_back(slab);
    for (size_t i = kSlabBlocks; i-- > 0;) free_buffers_.push_back(slab + i * kBlockSize);
  }
  uint8_t* b = free_buffers_.back();
  free_buffers_.pop_back();
  return b;
}

void BlockCache::pin(CachedBlock* b) {
  if (b->pins++ == 0) lru_.erase(b->lru);
}

void BlockCache::unpin(CachedBlock* b) {
  assert(b->pins > 0);
  if (--b->pins == 0) b->lru = lru_.insert(lru_.end(), b);
}

void BlockCache::mark_dirty(CachedBlock* b) {
  if (!b->dirty) {
    b->dirty = true;
    dirty_.insert(b);
  }
}

Status BlockCache::write_block(CachedBlock* b) {
  seal_block(b->data, seed_);
  MS_TRY(dev_.write(b->blocknr * kBlockSize, b->data, kBlockSize));
  b->dirty = false;
  dirty_.erase(b);
  return Status::ok();
}

void BlockCache::release(CachedBlock* b) {
  if (b->dirty) dirty_.erase(b);
  lru_.erase(b->lru);
  map_.erase(b->blocknr);
  free_buffers_.push_back(b->data);
  delete b;
}

Status BlockCache::make_room() {
  while (map_.size() >= capacity_ && !lru_.empty()) {
    CachedBlock* victim = lru_.front();
    if (victim->dirty) {
      MS_TRY(write_block(victim));
      ++stats_.writebacks;
    }
    release(victim);
    ++stats_.evictions;
  }
  return Status::ok();  // all pinned: run over budget by the pinned blocks
}

Result<CachedBlock*> BlockCache::allocate_slot(uint64_t blocknr) {
  MS_TRY(make_room());
  auto* b = new CachedBlock;
  b->blocknr = blocknr;
  b->data = new_buffer();
  b->lru = lru_.insert(lru_.end(), b);
  map_[blocknr] = b;
  return b;
}

Result<BlockRef> BlockCache::read(uint64_t blocknr, BlockType type, uint64_t max_generation) {
  auto it = map_.find(blocknr);
  if (it != map_.end()) {
    ++stats_.hits;
    CachedBlock* b = it->second;
    if (block_header(b->data)->type != static_cast<uint32_t>(type))
      return make_error(Code::kCorruption, "block {}: expected a {}, found type {:#x}", blocknr,
                        block_type_name(type), block_header(b->data)->type);
    return BlockRef(this, b);
  }
  ++stats_.misses;
  MS_ASSIGN_OR_RETURN(CachedBlock * b, allocate_slot(blocknr));
  Status s = dev_.read(blocknr * kBlockSize, b->data, kBlockSize);
  if (s.is_ok()) s = validate_block(b->data, blocknr, type, seed_, max_generation);
  if (!s.is_ok()) {
    release(b);
    return s;
  }
  return BlockRef(this, b);
}

Result<BlockRef> BlockCache::create(uint64_t blocknr) {
  auto it = map_.find(blocknr);
  CachedBlock* b;
  if (it != map_.end()) {
    b = it->second;
  } else {
    MS_ASSIGN_OR_RETURN(b, allocate_slot(blocknr));
  }
  std::memset(b->data, 0, kBlockSize);
  mark_dirty(b);
  return BlockRef(this, b);
}

void BlockCache::forget(uint64_t blocknr) {
  auto it = map_.find(blocknr);
  if (it == map_.end() || it->second->pins > 0) return;
  release(it->second);
}

Status BlockCache::write_dirty() {
  std::vector<CachedBlock*> dirty(dirty_.begin(), dirty_.end());
  std::sort(dirty.begin(), dirty.end(),
            [](const CachedBlock* a, const CachedBlock* b) { return a->blocknr < b->blocknr; });
  for (CachedBlock* b : dirty) MS_TRY(write_block(b));
  return Status::ok();
}

void BlockCache::clear() {
  std::vector<CachedBlock*> unpinned(lru_.begin(), lru_.end());
  for (CachedBlock* b : unpinned) release(b);
}

CacheStats BlockCache::stats() const {
  CacheStats s = stats_;
  s.blocks = map_.size();
  s.dirty = dirty_.size();
  return s;
}

}  // namespace multisnap
