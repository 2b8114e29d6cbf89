#include "meta/transaction.h"

#include <cassert>
#include <chrono>
#include <cstring>

#include "util/clock.h"
#include "util/units.h"

namespace multisnap {

namespace {
size_t selector_bytes(const Layout& l) {
  return div_round_up(l.meta_bitmaps, 4) + div_round_up(l.data_bitmaps, 4);
}

// Lays the selector bytes over the record's blocks: after the fixed fields in
// block 0, after the header in the others.
void scatter_selectors(std::vector<uint8_t>& record, const std::vector<uint8_t>& sel) {
  size_t pos = 0;
  for (size_t blk = 0; pos < sel.size(); ++blk) {
    size_t start = blk == 0 ? kCommitFirstSelectorOffset : sizeof(BlockHeaderDisk);
    size_t n = std::min(sel.size() - pos, kBlockSize - start);
    std::memcpy(record.data() + blk * kBlockSize + start, sel.data() + pos, n);
    pos += n;
  }
}

std::vector<uint8_t> gather_selectors(const std::vector<uint8_t>& record, size_t bytes) {
  std::vector<uint8_t> sel(bytes);
  size_t pos = 0;
  for (size_t blk = 0; pos < bytes; ++blk) {
    size_t start = blk == 0 ? kCommitFirstSelectorOffset : sizeof(BlockHeaderDisk);
    size_t n = std::min(bytes - pos, kBlockSize - start);
    std::memcpy(sel.data() + pos, record.data() + blk * kBlockSize + start, n);
    pos += n;
  }
  return sel;
}
}  // namespace

TransactionManager::TransactionManager(BlockDevice& dev, Superblock sb, TmOptions options)
    : dev_(dev), sb_(std::move(sb)), options_(options) {
  const Layout& l = sb_.layout;
  cache_ = std::make_unique<BlockCache>(dev_, options_.cache_bytes, sb_.checksum_seed());
  meta_ = std::make_unique<SpaceMap>(*cache_, "metadata", l.meta_blocks, l.meta_bitmap_start,
                                     l.meta_bitmaps, &generation_);
  data_ = std::make_unique<SpaceMap>(*cache_, "data", l.data_chunks, l.data_bitmap_start,
                                     l.data_bitmaps, &generation_);
}

Status TransactionManager::format(BlockDevice& dev, const Superblock& sb) {
  MS_TRY(write_superblock(dev, sb));
  // Generation 1 in slot 1, all bitmaps unwritten, store area zero; slot 0
  // is zeroed so no stale record from an earlier store survives there.
  const Layout& l = sb.layout;
  std::vector<uint8_t> zeros(size_t{l.commit_blocks} * kBlockSize, 0);
  MS_TRY(dev.write(l.commit_start * kBlockSize, zeros.data(), zeros.size()));
  TmOptions opts;
  opts.cache_bytes = 1 << 20;
  TransactionManager tm(dev, sb, opts);
  tm.generation_ = 1;
  tm.changed_ = true;
  return tm.commit();
}

Result<std::unique_ptr<TransactionManager>> TransactionManager::open(BlockDevice& dev,
                                                                    const TmOptions& options) {
  MS_ASSIGN_OR_RETURN(Superblock sb, read_superblock(dev));
  std::unique_ptr<TransactionManager> tm(new TransactionManager(dev, std::move(sb), options));
  MS_TRY(tm->load_commit_record());
  return tm;
}

Result<uint64_t> TransactionManager::read_slot(int slot, std::vector<uint8_t>* out) {
  const Layout& l = sb_.layout;
  uint64_t first = l.commit_start + uint64_t{static_cast<unsigned>(slot)} * l.commit_blocks;
  out->assign(size_t{l.commit_blocks} * kBlockSize, 0);
  MS_TRY(dev_.read(first * kBlockSize, out->data(), out->size()));
  uint64_t gen = 0;
  for (uint32_t b = 0; b < l.commit_blocks; ++b) {
    const uint8_t* blk = out->data() + size_t{b} * kBlockSize;
    MS_TRY(validate_block(blk, first + b, BlockType::kCommit, sb_.checksum_seed(), UINT64_MAX));
    uint64_t g = block_header(blk)->generation;
    if (b == 0) gen = g;
    else if (g != gen)
      return make_error(Code::kCorruption, "commit slot {}: block {} is from generation {}, not {}",
                        slot, first + b, g, gen);
  }
  const auto* rec = reinterpret_cast<const CommitRecordDisk*>(out->data());
  if (rec->record_blocks != l.commit_blocks || rec->bitmaps != l.meta_bitmaps + l.data_bitmaps)
    return make_error(Code::kCorruption, "commit slot {}: record shape does not match the superblock", slot);
  return gen;
}

Status TransactionManager::load_commit_record() {
  std::vector<uint8_t> rec[2];
  Result<uint64_t> gen[2] = {read_slot(0, &rec[0]), read_slot(1, &rec[1])};
  int best = -1;
  for (int s = 0; s < 2; ++s)
    if (gen[s].is_ok() && (best < 0 || *gen[s] > *gen[best])) best = s;
  if (best < 0)
    return make_error(Code::kCorruption, "{}: no valid commit record ({}; {})", dev_.describe(),
                      gen[0].status().to_string(), gen[1].status().to_string());
  const auto* r = reinterpret_cast<const CommitRecordDisk*>(rec[best].data());
  const Layout& l = sb_.layout;
  std::vector<uint8_t> sel = gather_selectors(rec[best], selector_bytes(l));
  size_t meta_bytes = div_round_up(l.meta_bitmaps, 4);
  meta_->load(std::vector<uint8_t>(sel.begin(), sel.begin() + static_cast<long>(meta_bytes)),
              r->meta_used, r->meta_cursor);
  data_->load(std::vector<uint8_t>(sel.begin() + static_cast<long>(meta_bytes), sel.end()),
              r->data_used, r->data_cursor);
  if (r->meta_used > l.meta_blocks || r->data_used > l.data_chunks)
    return make_error(Code::kCorruption, "commit record: usage counters exceed the store");
  std::memcpy(area_.data(), r->store_area, kStoreAreaSize);
  committed_area_ = area_;
  generation_ = *gen[best] + 1;
  commit_time_ns_ = r->commit_time_ns;
  return Status::ok();
}

Status TransactionManager::writable() const {
  if (!failure_.is_ok())
    return Status(Code::kFailed, "the store failed earlier and must be reopened (" +
                                     failure_.to_string() + ")");
  if (options_.read_only) return make_error(Code::kReadOnly, "the store is open read-only");
  return Status::ok();
}

Status TransactionManager::fail(Status why) {
  if (failure_.is_ok() && !why.is_ok()) failure_ = why;
  return why;
}

bool TransactionManager::in_meta_pool(uint64_t b) const {
  const Layout& l = sb_.layout;
  return b >= l.meta_start && b < l.meta_start + l.meta_blocks;
}

Result<BlockRef> TransactionManager::read(uint64_t blocknr, BlockType type) {
  if (type == BlockType::kBTreeNode && !in_meta_pool(blocknr))
    return make_error(Code::kCorruption, "pointer to block {} is outside the metadata area", blocknr);
  auto r = cache_->read(blocknr, type, generation_);
  if (!r.is_ok() && r.status().code() == Code::kIoError) fail(r.status()).ignore();
  return r;
}

Status TransactionManager::reserve_meta(uint64_t blocks) {
  MS_TRY(writable());
  // Blocks freed in this transaction are not reusable before it commits.
  uint64_t unavailable = meta_->used() + meta_->freed_this_transaction();
  if (unavailable >= meta_->total() || meta_->total() - unavailable < blocks)
    return make_error(Code::kNoSpace,
                      "the store's metadata area is full ({} of {} blocks in use, {} more freed but not reusable "
                      "before the next commit; this update needs {})",
                      meta_->used(), meta_->total(), meta_->freed_this_transaction(), blocks);
  return Status::ok();
}

Result<BlockRef> TransactionManager::new_block(BlockType type) {
  MS_TRY(writable());
  auto unit = meta_->allocate();
  if (!unit.is_ok()) return unit.status().code() == Code::kNoSpace ? unit.status() : fail(unit.status());
  uint64_t blocknr = sb_.layout.meta_start + *unit;
  auto ref = cache_->create(blocknr);
  if (!ref.is_ok()) return fail(ref.status());
  BlockHeaderDisk* h = block_header(ref->mutable_data());
  h->type = static_cast<uint32_t>(type);
  h->blocknr = blocknr;
  h->generation = generation_;
  changed_ = true;
  return ref;
}

Result<BlockRef> TransactionManager::shadow(const BlockRef& block, bool* moved) {
  if (is_shadow(block)) {
    if (moved) *moved = false;
    return block;
  }
  MS_TRY(writable());
  BlockType type = static_cast<BlockType>(block.header().type);
  MS_ASSIGN_OR_RETURN(BlockRef copy, new_block(type));
  uint8_t* d = copy.mutable_data();
  std::memcpy(d + sizeof(BlockHeaderDisk), block.data() + sizeof(BlockHeaderDisk), kBlockPayload);
  MS_TRY(free_block(block.blocknr()));
  if (moved) *moved = true;
  return copy;
}

Status TransactionManager::free_block(uint64_t blocknr) {
  MS_TRY(writable());
  if (!in_meta_pool(blocknr))
    return make_error(Code::kCorruption, "freeing block {} outside the metadata area", blocknr);
  Status s = meta_->free(blocknr - sb_.layout.meta_start);
  if (!s.is_ok()) return fail(s);
  cache_->forget(blocknr);
  changed_ = true;
  return Status::ok();
}

Result<uint64_t> TransactionManager::allocate_chunk() {
  MS_TRY(writable());
  auto chunk = data_->allocate();
  if (!chunk.is_ok()) return chunk.status().code() == Code::kNoSpace ? chunk.status() : fail(chunk.status());
  changed_ = true;
  return chunk;
}

Status TransactionManager::free_chunk(uint64_t chunk) {
  MS_TRY(writable());
  Status s = data_->free(chunk);
  if (!s.is_ok()) return fail(s);
  changed_ = true;
  return Status::ok();
}

StoreArea& TransactionManager::mutable_store_area() {
  changed_ = true;
  return area_;
}

Status TransactionManager::commit() {
  MS_TRY(writable());
  if (!has_changes()) return Status::ok();
  const Layout& l = sb_.layout;
  // 1. Everything the new record will reference, then a barrier.
  Status s = cache_->write_dirty();
  if (s.is_ok()) s = dev_.flush();
  if (!s.is_ok()) return fail(s.annotate("commit"));
  // 2. The record, in the slot the previous commit did not use.
  std::vector<uint8_t> rec(size_t{l.commit_blocks} * kBlockSize, 0);
  auto* r = reinterpret_cast<CommitRecordDisk*>(rec.data());
  uint64_t now = wall_clock_ns();
  r->commit_time_ns = now;
  r->record_blocks = l.commit_blocks;
  r->bitmaps = l.meta_bitmaps + l.data_bitmaps;
  r->meta_used = meta_->used();
  r->data_used = data_->used();
  r->meta_cursor = meta_->cursor();
  r->data_cursor = data_->cursor();
  std::memcpy(r->store_area, area_.data(), kStoreAreaSize);
  std::vector<uint8_t> sel = meta_->next_states();
  std::vector<uint8_t> dsel = data_->next_states();
  sel.insert(sel.end(), dsel.begin(), dsel.end());
  scatter_selectors(rec, sel);
  int slot = static_cast<int>(generation_ % 2);
  uint64_t first = l.commit_start + uint64_t{static_cast<unsigned>(slot)} * l.commit_blocks;
  for (uint32_t b = 0; b < l.commit_blocks; ++b) {
    uint8_t* blk = rec.data() + size_t{b} * kBlockSize;
    BlockHeaderDisk* h = block_header(blk);
    h->type = static_cast<uint32_t>(BlockType::kCommit);
    h->blocknr = first + b;
    h->generation = generation_;
    seal_block(blk, sb_.checksum_seed());
  }
  s = dev_.write(first * kBlockSize, rec.data(), rec.size());
  if (s.is_ok()) s = dev_.flush();
  if (!s.is_ok()) return fail(s.annotate("commit record"));
  // 3. Durable: the new state is the committed one.
  meta_->commit_done();
  data_->commit_done();
  committed_area_ = area_;
  commit_time_ns_ = now;
  ++generation_;
  changed_ = false;
  return Status::ok();
}

void TransactionManager::check_invariants() const {
#ifndef NDEBUG
  assert(generation_ >= 2);
  assert(meta_->used() <= meta_->total());
  assert(data_->used() <= data_->total());
  assert(!options_.read_only || !changed_);
#endif
}

}  // namespace multisnap
