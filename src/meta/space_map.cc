#include "meta/space_map.h"

#include <cstring>

#include "util/endian.h"

namespace multisnap {

namespace {
inline uint8_t* bits(uint8_t* block) { return block + sizeof(BlockHeaderDisk); }
inline const uint8_t* bits(const uint8_t* block) { return block + sizeof(BlockHeaderDisk); }
inline bool test_bit(const uint8_t* b, uint64_t i) { return (b[i / 8] >> (i % 8)) & 1; }
static_assert(kBitsPerBitmap % 64 == 0, "used_end() reads whole words");
}  // namespace

SpaceMap::SpaceMap(BlockCache& cache, std::string name, uint64_t units, uint64_t alloc_units,
                   uint64_t first_bitmap_block, uint32_t bitmaps, const uint64_t* generation)
    : cache_(cache), name_(std::move(name)), units_(units), alloc_units_(std::min(alloc_units, units)),
      first_(first_bitmap_block),
      bitmaps_(bitmaps), generation_(generation), states_((bitmaps + 3) / 4, 0),
      dirty_(bitmaps, false), full_hint_(bitmaps, false) {}

void SpaceMap::grow(uint64_t units, uint64_t alloc_units) {
  units_ = std::min<uint64_t>(std::max(units_, units), uint64_t{bitmaps_} * kBitsPerBitmap);
  alloc_units_ = std::min(std::max(alloc_units_, alloc_units), units_);
  // Bitmaps with new units may have free room again.
  full_hint_.assign(bitmaps_, false);
}

void SpaceMap::load(const std::vector<uint8_t>& states, uint64_t used, uint64_t cursor) {
  states_ = states;
  states_.resize((bitmaps_ + 3) / 4, 0);
  used_ = used;
  cursor_ = cursor < alloc_units_ ? cursor : 0;
  dirty_.assign(bitmaps_, false);
  dirty_count_ = 0;
  full_hint_.assign(bitmaps_, false);
  freed_ = 0;
  frontier_known_ = false;
  frontier_ = 0;
}

void SpaceMap::set_state(std::vector<uint8_t>& v, uint32_t i, uint8_t s) const {
  uint8_t& byte = v[i / 4];
  int shift = (i % 4) * 2;
  byte = static_cast<uint8_t>((byte & ~(3 << shift)) | (s << shift));
}

std::vector<uint8_t> SpaceMap::next_states() const {
  std::vector<uint8_t> next = states_;
  for (uint32_t i = 0, n = bitmaps_in_service(); i < n; ++i)
    if (dirty_[i]) set_state(next, i, static_cast<uint8_t>(2 | (bitmap_written(i) ? !committed_slot(i) : 0)));
  return next;
}

void SpaceMap::commit_done() {
  states_ = next_states();
  dirty_.assign(bitmaps_, false);
  dirty_count_ = 0;
  if (freed_ > 0) full_hint_.assign(bitmaps_, false);  // deferred frees are usable now
  freed_ = 0;
}

Status SpaceMap::validate_unit(uint64_t unit) const {
  if (unit >= units_)
    return make_error(Code::kCorruption, "{} space map: unit {} is outside 0..{}", name_, unit,
                      units_ - 1);
  return Status::ok();
}

Result<BlockRef> SpaceMap::committed_block(uint32_t i) {
  return cache_.read(bitmap_block(i, committed_slot(i)), BlockType::kBitmap, *generation_);
}

Result<BlockRef> SpaceMap::working_block(uint32_t i, bool for_write) {
  if (dirty_[i]) {
    int slot = bitmap_written(i) ? !committed_slot(i) : 0;
    return cache_.read(bitmap_block(i, slot), BlockType::kBitmap, *generation_);
  }
  if (!for_write) {
    if (!bitmap_written(i)) return BlockRef();  // all free, nothing to read
    return committed_block(i);
  }
  int slot = bitmap_written(i) ? !committed_slot(i) : 0;
  std::vector<uint8_t> payload(kBlockPayload, 0);
  if (bitmap_written(i)) {
    MS_ASSIGN_OR_RETURN(BlockRef old, committed_block(i));
    std::memcpy(payload.data(), bits(old.data()), kBlockPayload);
  }
  MS_ASSIGN_OR_RETURN(BlockRef b, cache_.create(bitmap_block(i, slot)));
  uint8_t* d = b.mutable_data();
  BlockHeaderDisk* h = block_header(d);
  h->type = static_cast<uint32_t>(BlockType::kBitmap);
  h->blocknr = bitmap_block(i, slot);
  h->generation = *generation_;
  std::memcpy(bits(d), payload.data(), kBlockPayload);
  dirty_[i] = true;
  ++dirty_count_;
  return b;
}

Result<uint64_t> SpaceMap::find_free_in(uint32_t i, uint64_t from_bit, uint64_t limit_bit) {
  uint64_t base = uint64_t{i} * kBitsPerBitmap;
  if (base >= units_) return UINT64_MAX;
  uint64_t limit = std::min<uint64_t>({kBitsPerBitmap, units_ - base, limit_bit});
  if (from_bit >= limit) return UINT64_MAX;
  const uint8_t* work = nullptr;
  const uint8_t* committed = nullptr;
  BlockRef wref, cref;
  if (dirty_[i]) {
    MS_ASSIGN_OR_RETURN(wref, working_block(i, false));
    work = bits(wref.data());
    if (bitmap_written(i)) {
      MS_ASSIGN_OR_RETURN(cref, committed_block(i));
      committed = bits(cref.data());
    }
  } else if (bitmap_written(i)) {
    MS_ASSIGN_OR_RETURN(cref, committed_block(i));
    committed = bits(cref.data());
  }
  // Word at a time: a unit is free when clear in both versions.
  uint64_t bit = from_bit;
  while (bit < limit) {
    if (bit % 64 == 0 && bit + 64 <= limit) {
      uint64_t w = work ? load_le<uint64_t>(work + bit / 8) : 0;
      uint64_t c = committed ? load_le<uint64_t>(committed + bit / 8) : 0;
      uint64_t taken = w | c;
      if (taken == ~0ull) {
        bit += 64;
        continue;
      }
      return base + bit + static_cast<uint64_t>(__builtin_ctzll(~taken));
    }
    bool taken = (work && test_bit(work, bit)) || (committed && test_bit(committed, bit));
    if (!taken) return base + bit;
    ++bit;
  }
  return UINT64_MAX;
}

Status SpaceMap::take(uint32_t i, uint64_t unit) {
  MS_ASSIGN_OR_RETURN(BlockRef w, working_block(i, true));
  uint8_t* b = bits(w.mutable_data());
  uint64_t bit = unit - uint64_t{i} * kBitsPerBitmap;
  b[bit / 8] = static_cast<uint8_t>(b[bit / 8] | (1u << (bit % 8)));
  ++used_;
  frontier_ = std::max(frontier_, unit + 1);
  return Status::ok();
}

Result<uint64_t> SpaceMap::next_fit(uint64_t limit) {
  const uint32_t searched = static_cast<uint32_t>((limit + kBitsPerBitmap - 1) / kBitsPerBitmap);
  const uint64_t cursor = cursor_ < limit ? cursor_ : 0;
  uint32_t start = static_cast<uint32_t>(cursor / kBitsPerBitmap);
  for (uint32_t k = 0; k <= searched; ++k) {
    uint32_t i = (start + k) % searched;
    if (full_hint_[i] && k != 0) continue;
    uint64_t from = (k == 0) ? cursor % kBitsPerBitmap : 0;
    uint64_t bitmap_limit = limit - uint64_t{i} * kBitsPerBitmap;
    MS_ASSIGN_OR_RETURN(uint64_t unit, find_free_in(i, from, bitmap_limit));
    if (unit == UINT64_MAX) {
      // Full as far as anything may be allocated in it (not only up to a frontier).
      if (from == 0 && (bitmap_limit >= kBitsPerBitmap || limit == alloc_units_)) full_hint_[i] = true;
      continue;
    }
    MS_TRY(take(i, unit));
    cursor_ = unit + 1 < alloc_units_ ? unit + 1 : 0;
    return unit;
  }
  return UINT64_MAX;
}

Result<uint64_t> SpaceMap::used_end() {
  for (uint32_t i = bitmaps_in_service(); i-- > 0;) {
    BlockRef w, c;
    if (dirty_[i]) {
      MS_ASSIGN_OR_RETURN(w, working_block(i, false));
    }
    if (bitmap_written(i)) {
      MS_ASSIGN_OR_RETURN(c, committed_block(i));
    }
    const uint8_t* wb = w ? bits(w.data()) : nullptr;
    const uint8_t* cb = c ? bits(c.data()) : nullptr;
    const uint64_t base = uint64_t{i} * kBitsPerBitmap;
    // From the top down: bit by bit to a word boundary, then a word at a
    // time (kBitsPerBitmap is a multiple of 64, so a word never reaches
    // past the payload).
    for (uint64_t end = std::min<uint64_t>(kBitsPerBitmap, units_ - base); end > 0;) {
      if (end % 64 == 0) {
        const uint64_t first = end - 64;
        uint64_t word = (wb ? load_le<uint64_t>(wb + first / 8) : 0) | (cb ? load_le<uint64_t>(cb + first / 8) : 0);
        if (word != 0) return base + first + 64 - static_cast<uint64_t>(__builtin_clzll(word));
        end = first;
        continue;
      }
      const uint64_t bit = end - 1;
      if ((wb && test_bit(wb, bit)) || (cb && test_bit(cb, bit))) return base + bit + 1;
      end = bit;
    }
  }
  return 0;
}

Result<uint64_t> SpaceMap::allocate() {
  if (alloc_units_ == 0)
    return make_error(Code::kNoSpace, "the store's {} space is full (it has no units)", name_);
  if (used_ >= units_)
    return make_error(Code::kNoSpace, "the store's {} space is full ({} of {} in use)", name_, used_, units_);
  if (frontier_policy_) {
    if (!frontier_known_) {
      MS_ASSIGN_OR_RETURN(uint64_t end, used_end());
      frontier_ = std::max(frontier_, end);
      frontier_known_ = true;
    }
    const uint64_t limit = std::min(frontier_, alloc_units_);
    // Every unit in use, and every one freed in this transaction, is below
    // the frontier: what is left there is allocatable now.
    if (limit > used_ + freed_) {
      MS_ASSIGN_OR_RETURN(uint64_t unit, next_fit(limit));
      if (unit != UINT64_MAX) return unit;
    }
    // Past the frontier: the first free unit, so the frontier moves by one.
    if (limit < alloc_units_) {
      MS_ASSIGN_OR_RETURN(uint64_t unit, allocate_in(limit, alloc_units_ - limit));
      if (unit != UINT64_MAX) {
        cursor_ = unit + 1 < alloc_units_ ? unit + 1 : 0;
        return unit;
      }
    }
  }
  MS_ASSIGN_OR_RETURN(uint64_t unit, next_fit(alloc_units_));
  if (unit != UINT64_MAX) return unit;
  return make_error(Code::kNoSpace,
                    "the store's {} space is full ({} in use, {} freed but not reusable before the next commit)",
                    name_, used_, freed_);
}

Result<uint64_t> SpaceMap::allocate_in(uint64_t first, uint64_t count) {
  MS_TRY(validate_unit(first));
  const uint64_t end = std::min(units_, first + count);
  for (uint64_t u = first; u < end;) {
    uint32_t i = static_cast<uint32_t>(u / kBitsPerBitmap);
    uint64_t base = uint64_t{i} * kBitsPerBitmap;
    MS_ASSIGN_OR_RETURN(uint64_t unit, find_free_in(i, u - base, end - base));
    if (unit != UINT64_MAX) {
      MS_TRY(take(i, unit));
      return unit;
    }
    u = base + kBitsPerBitmap;
  }
  return UINT64_MAX;
}

Status SpaceMap::free(uint64_t unit, bool* pinned) {
  MS_TRY(validate_unit(unit));
  uint32_t i = static_cast<uint32_t>(unit / kBitsPerBitmap);
  uint64_t bit = unit % kBitsPerBitmap;
  // A unit allocated in this transaction is free in both versions once
  // cleared, so it is usable again at once; only committed ones are pinned.
  MS_ASSIGN_OR_RETURN(bool was_committed, is_allocated_committed(unit));
  MS_ASSIGN_OR_RETURN(BlockRef w, working_block(i, true));
  uint8_t* b = bits(w.mutable_data());
  if (!test_bit(b, bit))
    return make_error(Code::kCorruption, "{} space map: freeing unit {} which is not in use", name_, unit);
  b[bit / 8] = static_cast<uint8_t>(b[bit / 8] & ~(1u << (bit % 8)));
  --used_;
  if (was_committed) ++freed_;
  else full_hint_[i] = false;
  if (pinned) *pinned = was_committed;
  return Status::ok();
}

Result<bool> SpaceMap::is_allocated(uint64_t unit) {
  MS_TRY(validate_unit(unit));
  uint32_t i = static_cast<uint32_t>(unit / kBitsPerBitmap);
  MS_ASSIGN_OR_RETURN(BlockRef w, working_block(i, false));
  if (!w) return false;
  return test_bit(bits(w.data()), unit % kBitsPerBitmap);
}

Result<bool> SpaceMap::is_allocated_committed(uint64_t unit) {
  MS_TRY(validate_unit(unit));
  uint32_t i = static_cast<uint32_t>(unit / kBitsPerBitmap);
  if (!bitmap_written(i)) return false;
  MS_ASSIGN_OR_RETURN(BlockRef c, committed_block(i));
  return test_bit(bits(c.data()), unit % kBitsPerBitmap);
}

Result<uint64_t> SpaceMap::committed_bits_past_end() {
  uint64_t stray = 0;
  for (uint32_t i = static_cast<uint32_t>(units_ / kBitsPerBitmap); i < bitmaps_; ++i) {
    if (!bitmap_written(i)) continue;
    MS_ASSIGN_OR_RETURN(BlockRef c, committed_block(i));
    uint64_t base = uint64_t{i} * kBitsPerBitmap;
    for (uint64_t b = units_ > base ? units_ - base : 0; b < kBitsPerBitmap; ++b)
      if (test_bit(bits(c.data()), b)) ++stray;
  }
  return stray;
}

Result<std::vector<bool>> SpaceMap::committed_bits() {
  std::vector<bool> out(units_, false);
  for (uint32_t i = 0; i < bitmaps_; ++i) {
    if (!bitmap_written(i)) continue;
    MS_ASSIGN_OR_RETURN(BlockRef c, committed_block(i));
    uint64_t base = uint64_t{i} * kBitsPerBitmap;
    uint64_t limit = std::min<uint64_t>(kBitsPerBitmap, units_ - base);
    for (uint64_t b = 0; b < limit; ++b)
      if (test_bit(bits(c.data()), b)) out[base + b] = true;
  }
  return out;
}

Status SpaceMap::for_each_committed(uint64_t from, const std::function<void(uint64_t)>& fn) {
  for (uint32_t i = static_cast<uint32_t>(std::min<uint64_t>(from / kBitsPerBitmap, bitmaps_)); i < bitmaps_; ++i) {
    if (!bitmap_written(i)) continue;
    MS_ASSIGN_OR_RETURN(BlockRef c, committed_block(i));
    uint64_t base = uint64_t{i} * kBitsPerBitmap;
    if (base >= units_) break;
    uint64_t limit = std::min<uint64_t>(kBitsPerBitmap, units_ - base);
    uint64_t b = from > base ? from - base : 0;
    for (; b < limit; ++b)
      if (test_bit(bits(c.data()), b)) fn(base + b);
  }
  return Status::ok();
}

}  // namespace multisnap
