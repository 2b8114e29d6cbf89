#include "meta/transaction.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstring>

#include "util/clock.h"
#include "util/log.h"
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
  meta_ = std::make_unique<SpaceMap>(*cache_, "metadata", l.meta_units(), l.meta_blocks, l.meta_bitmap_start,
                                     l.meta_bitmaps, &generation_);
  data_ = std::make_unique<SpaceMap>(*cache_, "data", l.data_chunks, l.data_chunks, l.data_bitmap_start,
                                     l.data_bitmaps, &generation_);
  data_->use_frontier();  // a sparse store file stays as sparse as its peak use (space_map.h)
}

Status TransactionManager::format(BlockDevice& dev, const Superblock& sb) {
  MS_TRY(write_superblock(dev, sb));
  // Generation 1 in slot 1, all bitmaps unwritten, store area zero; slot 0
  // is zeroed so no stale record from an earlier store survives there.
  const Layout& l = sb.layout;
  std::vector<uint8_t> zeros(size_t{l.commit_blocks} * 2 * kCommitCopies * kBlockSize, 0);
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
  if (!options.read_only) {
    // Invariant 7: commit records, bitmaps and the pool never wait for space.
    Status s = tm->preallocate_metadata();
    if (!s.is_ok())
      MS_LOG_WARN("{}: could not preallocate the metadata area ({}); a full host filesystem may fail the store",
                  dev.describe(), s.to_string());
  }
  return tm;
}

Result<uint64_t> TransactionManager::read_copy(int slot, int copy, std::vector<uint8_t>* out) {
  const Layout& l = sb_.layout;
  uint64_t first = l.commit_record_block(slot, copy);
  out->assign(size_t{l.commit_blocks} * kBlockSize, 0);
  MS_TRY(dev_.read(first * kBlockSize, out->data(), out->size()));
  uint64_t gen = 0;
  for (uint32_t b = 0; b < l.commit_blocks; ++b) {
    const uint8_t* blk = out->data() + size_t{b} * kBlockSize;
    MS_TRY(validate_block(blk, first + b, BlockType::kCommit, sb_.checksum_seed(), UINT64_MAX));
    uint64_t g = block_header(blk)->generation;
    if (b == 0) gen = g;
    else if (g != gen)
      return make_error(Code::kCorruption, "commit record at block {}: block {} is from generation {}, not {}",
                        first, first + b, g, gen);
  }
  const auto* rec = reinterpret_cast<const CommitRecordDisk*>(out->data());
  if (rec->record_blocks != l.commit_blocks || rec->bitmaps != l.meta_bitmaps + l.data_bitmaps)
    return make_error(Code::kCorruption, "commit record at block {}: its shape does not match the superblock",
                      first);
  return gen;
}

namespace {
bool all_zero(const std::vector<uint8_t>& v) {
  return std::all_of(v.begin(), v.end(), [](uint8_t b) { return b == 0; });
}
}  // namespace

Status TransactionManager::load_commit_record() {
  // Four copies: two per slot. Take the newest generation any valid copy
  // holds; report every copy that is damaged or stale.
  struct Copy {
    std::vector<uint8_t> bytes;
    Result<uint64_t> gen = Status(Code::kCorruption, "unread");
    bool blank = false;  // never written (a new store's slot 0)
    uint64_t block = 0;
  };
  Copy c[2][kCommitCopies];
  int best_slot = -1, best_copy = -1;
  for (int s = 0; s < 2; ++s)
    for (int k = 0; k < kCommitCopies; ++k) {
      Copy& x = c[s][k];
      x.block = sb_.layout.commit_record_block(s, k);
      x.gen = read_copy(s, k, &x.bytes);
      if (!x.gen.is_ok() && x.gen.status().code() == Code::kIoError) return x.gen.status();
      x.blank = !x.gen.is_ok() && all_zero(x.bytes);
      if (x.gen.is_ok() && (best_slot < 0 || *x.gen > *c[best_slot][best_copy].gen)) {
        best_slot = s;
        best_copy = k;
      }
    }
  if (best_slot < 0)
    return make_error(Code::kCorruption, "{}: no valid commit record: {}; {}; {}; {}", dev_.describe(),
                      c[0][0].gen.status().to_string(), c[1][0].gen.status().to_string(),
                      c[0][1].gen.status().to_string(), c[1][1].gen.status().to_string());
  const uint64_t best = *c[best_slot][best_copy].gen;
  findings_.clear();
  for (int k = 0; k < kCommitCopies; ++k) {
    const Copy& x = c[best_slot][k];
    if (k == best_copy) continue;
    if (!x.gen.is_ok())
      findings_.push_back({false, fmt::format("copy {} of the newest commit record (generation {}) at block {} is "
                                              "damaged ({}); copy {} at block {} is intact",
                                              k, best, x.block, x.gen.status().to_string(), best_copy,
                                              c[best_slot][best_copy].block)});
    else if (*x.gen != best)
      findings_.push_back({false, fmt::format("copy {} of the newest commit record at block {} holds generation "
                                              "{}, not {} (a commit interrupted after its first copy)",
                                              k, x.block, *x.gen, best)});
  }
  // The other slot holds the commit before (or, if both its copies are
  // damaged, perhaps a newer one that is lost).
  const int other = 1 - best_slot;
  int damaged = 0, newer_claims = 0;
  for (int k = 0; k < kCommitCopies; ++k) {
    const Copy& x = c[other][k];
    if (x.gen.is_ok() || x.blank) continue;
    ++damaged;
    const BlockHeaderDisk* h = block_header(x.bytes.data());
    bool plausible_old = h->type == static_cast<uint32_t>(BlockType::kCommit) && h->blocknr == x.block &&
                         h->generation < best;
    if (!plausible_old) ++newer_claims;
    findings_.push_back({false, fmt::format("copy {} of the older commit record at block {} is damaged ({}): an "
                                            "interrupted commit, or damage; the next commit rewrites it",
                                            k, x.block, x.gen.status().to_string())});
  }
  if (damaged == kCommitCopies && newer_claims > 0) {
    std::string text = fmt::format(
        "both copies of the commit record at blocks {} and {} are damaged and may have held a commit newer than "
        "generation {}, which is the newest intact one; its changes would be lost",
        c[other][0].block, c[other][1].block, best);
    if (!options_.use_older_commit)
      return make_error(Code::kCorruption, "{}: {} (to open generation {} anyway, serve with --use-older-commit)",
                        dev_.describe(), text, best);
    findings_.push_back({true, text + "; opened at generation " + std::to_string(best) + " as asked"});
  }

  const std::vector<uint8_t>& chosen = c[best_slot][best_copy].bytes;
  const auto* r = reinterpret_cast<const CommitRecordDisk*>(chosen.data());
  if (sb_.layout.growable()) MS_TRY(load_size(*r));
  const Layout& l = sb_.layout;
  std::vector<uint8_t> sel = gather_selectors(chosen, selector_bytes(l));
  size_t meta_bytes = div_round_up(l.meta_bitmaps, 4);
  meta_->load(std::vector<uint8_t>(sel.begin(), sel.begin() + static_cast<long>(meta_bytes)),
              r->meta_used, r->meta_cursor);
  data_->load(std::vector<uint8_t>(sel.begin() + static_cast<long>(meta_bytes), sel.end()),
              r->data_used, r->data_cursor);
  if (r->meta_used > l.meta_units() || r->data_used > l.data_chunks ||
      (!l.shared_space() && r->meta_borrowed_chunks != 0))
    return make_error(Code::kCorruption, "commit record: usage counters exceed the store");
  committed_borrowed_ = r->meta_borrowed_chunks;
  std::memcpy(area_.data(), r->store_area, kStoreAreaSize);
  committed_area_ = area_;
  generation_ = best + 1;
  newest_record_ = chosen;
  newest_slot_ = best_slot;
  return load_borrowed();
}

Status TransactionManager::load_size(const CommitRecordDisk& r) {
  Layout& l = sb_.layout;
  // create writes the size into the first record, so 0 is damage.
  if (r.data_chunks < l.data_chunks || r.data_chunks > l.capacity_chunks() || r.store_size < l.store_size ||
      l.data_start + r.data_chunks * l.chunk_size > r.store_size)
    return make_error(Code::kCorruption,
                      "{}: the commit record's size ({} data chunks, {} bytes) is impossible for this store (made "
                      "with {} chunks, room for {})",
                      dev_.describe(), r.data_chunks, r.store_size, l.data_chunks, l.capacity_chunks());
  if (r.store_size > dev_.size())
    return make_error(Code::kCorruption,
                      "{}: the store grew to {} bytes but the device has only {}; was it truncated or replaced by a "
                      "smaller one? (a truncated file: `truncate -s {}` it back; the data past its end is lost)",
                      dev_.describe(), r.store_size, dev_.size(), r.store_size);
  set_size(r.data_chunks, r.store_size);
  return Status::ok();
}

void TransactionManager::set_size(uint64_t chunks, uint64_t store_bytes) {
  Layout& l = sb_.layout;
  l.data_chunks = chunks;
  l.store_size = store_bytes;
  meta_->grow(l.meta_units(), l.meta_blocks);
  data_->grow(chunks, chunks);
}

Status TransactionManager::preallocate_metadata() {
  // The superblock, commit records, the bitmaps that hold units now and the
  // pool; the bitmaps of the room to grow are left sparse (grow allocates
  // those it brings into service before its commit).
  const Layout& l = sb_.layout;
  MS_TRY(dev_.preallocate(0, l.meta_bitmap_start * kBlockSize));
  MS_TRY(dev_.preallocate(l.meta_bitmap_start * kBlockSize, 2ull * meta_->bitmaps_in_service() * kBlockSize));
  MS_TRY(dev_.preallocate(l.data_bitmap_start * kBlockSize, 2ull * data_->bitmaps_in_service() * kBlockSize));
  return dev_.preallocate(l.meta_start * kBlockSize, l.data_start - l.meta_start * kBlockSize);
}

Status TransactionManager::grow(uint64_t chunks, uint64_t store_bytes) {
  MS_TRY(writable());
  Layout& l = sb_.layout;
  if (!l.growable())
    return make_error(Code::kNotSupported,
                      "this store (format version {}) was made without room to grow; create a new store (with "
                      "--max-store-size for room) and move the data over with send and receive",
                      l.version);
  if (chunks <= l.data_chunks || chunks > l.capacity_chunks() || l.data_start + chunks * l.chunk_size > store_bytes)
    return make_error(Code::kInvalidArgument, "cannot grow the data area from {} to {} chunks (room for {})",
                      l.data_chunks, chunks, l.capacity_chunks());
  if (store_bytes > dev_.size())
    return make_error(Code::kInvalidArgument, "the store device has {} bytes, not {}", dev_.size(), store_bytes);
  // The bits past each map's end become free units: they must be 0.
  for (SpaceMap* map : {data_.get(), meta_.get()}) {
    MS_ASSIGN_OR_RETURN(uint64_t stray, map->committed_bits_past_end());
    if (stray > 0)
      return make_error(Code::kCorruption,
                        "the {} space map has {} units marked in use past its end; run multisnap check (the store "
                        "was not grown)",
                        map == data_.get() ? "data" : "metadata", stray);
  }
  const uint64_t old_chunks = l.data_chunks, old_size = l.store_size;
  set_size(chunks, store_bytes);
  // Invariant 7 for the bitmaps brought into service.
  if (Status s = preallocate_metadata(); !s.is_ok()) {
    l.data_chunks = old_chunks;  // nothing was allocated in the new units yet: take them back
    l.store_size = old_size;
    meta_->shrink_to(l.meta_units());
    data_->shrink_to(old_chunks);
    return s.code() == Code::kNoSpace
               ? make_error(Code::kNoSpace, "the host filesystem has no room for the grown store's bitmaps: {}",
                            s.to_string())
               : s;
  }
  // The last group was preallocated only up to the old end: start afresh
  // (fallocate of what is already allocated costs little).
  prealloc_done_.clear();
  changed_ = true;
  return Status::ok();
}

Status TransactionManager::load_borrowed() {
  const Layout& l = sb_.layout;
  if (!l.shared_space()) return Status::ok();
  bool outside = false;
  MS_TRY(meta_->for_each_committed(l.meta_blocks, [&](uint64_t unit) {
    uint64_t b = l.meta_start + unit;
    if (!l.in_data_area(b)) {
      outside = true;
      return;
    }
    ++borrowed_[l.chunk_of_block(b)].used;
    ++borrowed_used_;
  }));
  if (outside)
    return make_error(Code::kCorruption, "{}: the metadata bitmap has blocks in use between the pool and the data area",
                      dev_.describe());
  for (auto& [c, b] : borrowed_) {
    borrowed_avail_ += avail(b);
    if (avail(b) > 0) open_chunks_.insert(c);
  }
  return Status::ok();
}

Status TransactionManager::write_copy(int slot, int copy, std::vector<uint8_t> rec) {
  const Layout& l = sb_.layout;
  uint64_t first = l.commit_record_block(slot, copy);
  for (uint32_t b = 0; b < l.commit_blocks; ++b) {
    uint8_t* blk = rec.data() + size_t{b} * kBlockSize;
    block_header(blk)->blocknr = first + b;
    seal_block(blk, sb_.checksum_seed());
  }
  return dev_.write(first * kBlockSize, rec.data(), rec.size());
}

Result<int> TransactionManager::repair_commit_copies() {
  MS_TRY(writable());
  int repaired = 0;
  for (int k = 0; k < kCommitCopies; ++k) {
    std::vector<uint8_t> bytes;
    auto gen = read_copy(newest_slot_, k, &bytes);
    if (gen.is_ok() && *gen == generation_ - 1) continue;
    Status s = write_copy(newest_slot_, k, newest_record_);
    if (!s.is_ok()) return fail(s.annotate("repairing a commit record copy"));
    ++repaired;
  }
  if (repaired > 0) {
    Status s = dev_.flush();
    if (!s.is_ok()) return fail(s.annotate("repairing a commit record copy"));
  }
  return repaired;
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

bool TransactionManager::in_meta_space(uint64_t b) const {
  return in_meta_pool(b) || (sb_.layout.shared_space() && sb_.layout.in_data_area(b));
}

uint64_t TransactionManager::meta_available() const {
  uint64_t pool_used = meta_->used() - borrowed_used_;
  uint64_t pool_pinned = meta_->freed_this_transaction() - borrowed_pinned_;
  uint64_t pool_taken = pool_used + pool_pinned;
  uint64_t pool = meta_->alloc_units() > pool_taken ? meta_->alloc_units() - pool_taken : 0;
  return pool + borrowed_avail_;
}

uint64_t TransactionManager::data_available() const {
  uint64_t taken = data_->used() + data_->freed_this_transaction();
  return data_->total() > taken ? data_->total() - taken : 0;
}

Status TransactionManager::check_delete_reserve(const char* what, uint64_t blocks) const {
  if (delete_reserve_users_ > 0 || !sb_.layout.shared_space()) return Status::ok();
  const uint64_t room = room_blocks();
  if (room >= blocks + delete_reserve_blocks()) return Status::ok();
  return make_error(Code::kNoSpace,
                    "the store is full: {} needs {} blocks and {} are left, of which {} are kept for deleting "
                    "snapshots ({} of {} data chunks in use, {} of them holding metadata; {} more freed but not "
                    "reusable before the next commit)",
                    what, blocks, room, delete_reserve_blocks(), data_->used(), data_->total(), borrowed_.size(),
                    data_->freed_this_transaction());
}

Status TransactionManager::ensure_backed(uint64_t chunk) {
  const Layout& l = sb_.layout;
  const uint64_t per_group = std::max<uint64_t>(1, kPreallocGroupBytes / l.chunk_size);
  const uint64_t g = chunk / per_group;
  if (prealloc_done_.empty()) prealloc_done_.assign(div_round_up(l.data_chunks, per_group), false);
  if (prealloc_done_[g]) return Status::ok();
  const uint64_t first = g * per_group;
  const uint64_t count = std::min(per_group, l.data_chunks - first);
  Status s = dev_.preallocate(l.data_offset(first), count * l.chunk_size);
  if (s.is_ok()) {
    prealloc_done_[g] = true;
    return s;
  }
  if (s.code() != Code::kNoSpace) return s;
  // Not room for the whole group: this chunk alone may still fit.
  return dev_.preallocate(l.data_offset(chunk), l.chunk_size);
}

Result<uint64_t> TransactionManager::allocate_backed_chunk() {
  MS_ASSIGN_OR_RETURN(uint64_t chunk, data_->allocate());
  Status s = ensure_backed(chunk);
  if (s.is_ok()) return chunk;
  // Allocated in this transaction, so free again at once (not pinned).
  Status undo = data_->free(chunk);
  if (!undo.is_ok()) return fail(undo);
  if (s.code() == Code::kNoSpace)
    return make_error(Code::kNoSpace, "the store cannot grow on its host filesystem: {}", s.to_string());
  return s;  // an error of fallocate itself: this request fails, the store goes on
}

Status TransactionManager::borrow_chunk() {
  auto chunk = allocate_backed_chunk();
  if (!chunk.is_ok()) {
    if (chunk.status().code() != Code::kNoSpace) return fail(chunk.status());
    if (data_available() > 0) return chunk.status();  // the host filesystem is full, not the store
    return make_error(Code::kNoSpace,
                      "the store is full: metadata needs room and no data chunk is free ({} of {} chunks in use, {} "
                      "of them holding metadata; {} more freed but not reusable before the next commit)",
                      data_->used(), data_->total(), borrowed_.size(), data_->freed_this_transaction());
  }
  borrowed_[*chunk] = Borrowed{};
  open_chunks_.insert(*chunk);
  maybe_empty_.insert(*chunk);
  borrowed_avail_ += sb_.layout.chunk_blocks();
  changed_ = true;
  return Status::ok();
}

Result<uint64_t> TransactionManager::allocate_borrowed() {
  if (open_chunks_.empty()) MS_TRY(borrow_chunk());
  const Layout& l = sb_.layout;
  const uint64_t c = *open_chunks_.begin();
  Borrowed& b = borrowed_[c];
  const uint64_t first = l.data_start_block() + c * l.chunk_blocks();
  auto unit = meta_->allocate_in(first - l.meta_start, l.chunk_blocks());
  if (!unit.is_ok()) return fail(unit.status());
  if (*unit == UINT64_MAX)
    return fail(make_error(Code::kCorruption, "borrowed chunk {} should have a free block but has none", c));
  ++b.used;
  ++borrowed_used_;
  --borrowed_avail_;
  if (avail(b) == 0) open_chunks_.erase(c);
  return *unit;
}

Status TransactionManager::release_empty_chunks() {
  for (uint64_t c : maybe_empty_) {
    auto it = borrowed_.find(c);
    if (it == borrowed_.end() || it->second.used > 0) continue;
    Status s = data_->free(c);
    if (!s.is_ok()) return fail(s);
    borrowed_avail_ -= avail(it->second);
    borrowed_pinned_ -= it->second.pinned;
    open_chunks_.erase(c);
    pinned_chunks_.erase(c);
    borrowed_.erase(it);
  }
  maybe_empty_.clear();
  return Status::ok();
}

void TransactionManager::unpin_borrowed() {
  for (uint64_t c : pinned_chunks_) {
    auto it = borrowed_.find(c);
    if (it == borrowed_.end()) continue;
    borrowed_avail_ += it->second.pinned;
    it->second.pinned = 0;
    if (avail(it->second) > 0) open_chunks_.insert(c);
  }
  pinned_chunks_.clear();
  borrowed_pinned_ = 0;
}

Result<BlockRef> TransactionManager::read(uint64_t blocknr, BlockType type) {
  if (type == BlockType::kBTreeNode && !in_meta_space(blocknr))
    return make_error(Code::kCorruption, "pointer to block {} is outside the metadata area", blocknr);
  auto r = cache_->read(blocknr, type, generation_);
  if (!r.is_ok() && r.status().code() == Code::kIoError) fail(r.status()).ignore();
  return r;
}

Status TransactionManager::reserve_meta(uint64_t blocks, bool keep_delete_reserve) {
  MS_TRY(writable());
  if (keep_delete_reserve) MS_TRY(check_delete_reserve("metadata", blocks));
  // Blocks freed in this transaction are not reusable before it commits.
  while (meta_available() < blocks) {
    if (!sb_.layout.shared_space())
      return make_error(Code::kNoSpace,
                        "the store's metadata area is full ({} of {} blocks in use, {} more freed but not reusable "
                        "before the next commit; this update needs {}; a format-2 store cannot lend it data space)",
                        meta_->used(), meta_->total(), meta_->freed_this_transaction(), blocks);
    Status s = borrow_chunk();
    if (!s.is_ok()) {
      // Hand back what this attempt borrowed, so data can still use it.
      MS_TRY(release_empty_chunks());
      return s;
    }
  }
  return Status::ok();
}

Result<BlockRef> TransactionManager::new_block(BlockType type) {
  MS_TRY(writable());
  auto unit = meta_->allocate();
  if (!unit.is_ok() && unit.status().code() == Code::kNoSpace && sb_.layout.shared_space())
    unit = allocate_borrowed();
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
  const Layout& l = sb_.layout;
  if (!in_meta_space(blocknr))
    return make_error(Code::kCorruption, "freeing block {} outside the metadata area", blocknr);
  Borrowed* owner = nullptr;
  uint64_t chunk = 0;
  if (!in_meta_pool(blocknr)) {
    chunk = l.chunk_of_block(blocknr);
    auto it = borrowed_.find(chunk);
    if (it == borrowed_.end())
      return fail(make_error(Code::kCorruption, "freeing block {} in data chunk {}, which holds no metadata",
                             blocknr, chunk));
    owner = &it->second;
  }
  bool pinned = false;
  Status s = meta_->free(blocknr - l.meta_start, &pinned);
  if (!s.is_ok()) return fail(s);
  if (owner) {
    --owner->used;
    --borrowed_used_;
    if (pinned) {
      ++owner->pinned;
      ++borrowed_pinned_;
      pinned_chunks_.insert(chunk);
    } else {
      ++borrowed_avail_;
      open_chunks_.insert(chunk);
    }
    if (owner->used == 0) maybe_empty_.insert(chunk);
  }
  cache_->forget(blocknr);
  changed_ = true;
  return Status::ok();
}

Result<uint64_t> TransactionManager::allocate_chunk() {
  MS_TRY(writable());
  MS_TRY(check_delete_reserve("a data chunk", sb_.layout.chunk_blocks()));
  auto chunk = allocate_backed_chunk();
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
  // Invariant 6: a borrowed chunk left without metadata goes back to data.
  MS_TRY(release_empty_chunks());
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
  r->meta_borrowed_chunks = borrowed_.size();
  if (l.growable()) {
    r->data_chunks = l.data_chunks;
    r->store_size = l.store_size;
  }
  std::memcpy(r->store_area, area_.data(), kStoreAreaSize);
  std::vector<uint8_t> sel = meta_->next_states();
  std::vector<uint8_t> dsel = data_->next_states();
  sel.insert(sel.end(), dsel.begin(), dsel.end());
  scatter_selectors(rec, sel);
  int slot = static_cast<int>(generation_ % 2);
  for (uint32_t b = 0; b < l.commit_blocks; ++b) {
    BlockHeaderDisk* h = block_header(rec.data() + size_t{b} * kBlockSize);
    h->type = static_cast<uint32_t>(BlockType::kCommit);
    h->generation = generation_;
  }
  // Two copies, two writes, one barrier: a power cut tears at most the write
  // in progress, and media damage to one copy leaves the other.
  for (int k = 0; k < kCommitCopies && s.is_ok(); ++k) s = write_copy(slot, k, rec);
  if (s.is_ok()) s = dev_.flush();
  if (!s.is_ok()) return fail(s.annotate("commit record"));
  // 3. Durable: the new state is the committed one.
  meta_->commit_done();
  data_->commit_done();
  unpin_borrowed();
  committed_borrowed_ = borrowed_.size();
  committed_area_ = area_;
  newest_record_ = std::move(rec);
  newest_slot_ = slot;
  ++generation_;
  changed_ = false;
  check_invariants();
  return Status::ok();
}

void TransactionManager::check_invariants() const {
#ifndef NDEBUG
  assert(generation_ >= 2);
  assert(meta_->used() <= meta_->total());
  assert(borrowed_used_ <= meta_->used() && borrowed_.size() <= data_->used());
  assert(borrowed_pinned_ == 0 && maybe_empty_.empty());
  for ([[maybe_unused]] auto& [c, b] : borrowed_) assert(b.used > 0 && b.pinned == 0);
  assert(data_->used() <= data_->total());
  assert(!options_.read_only || !changed_);
  assert(failure_.is_ok() || !changed_ || generation_ >= 2);
#endif
}

}  // namespace multisnap
