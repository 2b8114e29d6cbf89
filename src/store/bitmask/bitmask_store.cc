#include "store/bitmask/bitmask_store.h"

#include <algorithm>
#include <bit>
#include <map>

namespace multisnap {

// ---------------------------------------------------------------- lifecycle

Result<std::unique_ptr<BitmaskStore>> BitmaskStore::create(std::unique_ptr<TransactionManager> tm) {
  std::unique_ptr<BitmaskStore> s(new BitmaskStore(std::move(tm)));
  MS_TRY(s->init_common());
  MS_ASSIGN_OR_RETURN(s->exceptions_root_, ExceptionTree::create(*s->tm_));
  MS_TRY(s->commit());
  return s;
}

Result<std::unique_ptr<BitmaskStore>> BitmaskStore::open(std::unique_ptr<TransactionManager> tm) {
  std::unique_ptr<BitmaskStore> s(new BitmaskStore(std::move(tm)));
  s->load_common();
  s->load_specific();
  return s;
}

void BitmaskStore::load_specific() {
  BitmaskStoreAreaDisk d;
  std::memcpy(&d, tm_->store_area().data() + kStoreAreaSpecificOffset, sizeof d);
  exceptions_root_ = d.exceptions_root;
  exception_count_ = d.exception_count;
  live_ = d.live_mask;
  sweep_ = d.sweep_mask;
  pending_ = d.pending_mask;
  cursor_ = {d.sweep_chunk, d.sweep_store_chunk};
}

void BitmaskStore::save_specific(uint8_t* area) {
  BitmaskStoreAreaDisk d{};
  d.exceptions_root = exceptions_root_;
  d.exception_count = exception_count_;
  d.live_mask = live_;
  d.sweep_mask = sweep_;
  d.pending_mask = pending_;
  d.sweep_chunk = cursor_.hi;
  d.sweep_store_chunk = cursor_.lo;
  std::memcpy(area + kStoreAreaSpecificOffset, &d, sizeof d);
}

// ---------------------------------------------------------------- snapshots

Result<uint64_t> BitmaskStore::allocate_key(SnapshotRecord* parent) {
  if (parent)
    return make_error(Code::kNotSupported,
                      "the bitmask store cannot take snapshots of snapshots (a range store can: create it with "
                      "--format range)");
  uint64_t taken = live_ | sweep_ | pending_;
  if (taken == ~uint64_t{0}) {
    int reclaiming = std::popcount(sweep_ | pending_);
    return make_error(Code::kNoSpace, "the bitmask store holds at most 64 snapshots ({} live{}); delete one first",
                      std::popcount(live_),
                      reclaiming ? fmt::format(", {} being reclaimed", reclaiming) : std::string());
  }
  return static_cast<uint64_t>(std::countr_one(taken));  // the lowest free bit
}

Status BitmaskStore::on_created(const SnapshotInfo& info) {
  live_ |= bit(info);
  tm_->mutable_store_area();
  return Status::ok();
}

Status BitmaskStore::on_deleted(const SnapshotInfo& info) {
  uint64_t b = bit(info);
  live_ &= ~b;
  if (sweep_ == 0) {
    sweep_ = b;
    cursor_ = {};
  } else {
    pending_ |= b;  // the running pass may be past some of its exceptions
  }
  tm_->mutable_store_area();
  return Status::ok();
}

// ---------------------------------------------------------------- tree helpers

Result<std::vector<BitmaskStore::Exception>> BitmaskStore::exceptions_of(uint64_t chunk) {
  std::vector<Exception> out;
  ExceptionTree ex(*tm_, exceptions_root_);
  MS_TRY(ex.scan({chunk, 0}, [&](const PairKey& k, const MaskValue& v) {
    if (k.hi != chunk) return false;
    out.push_back({k.lo, v.mask});
    return true;
  }));
  return out;
}

Status BitmaskStore::put(uint64_t chunk, uint64_t store_chunk, uint64_t mask) {
  ExceptionTree ex(*tm_, exceptions_root_);
  Status s = ex.insert({chunk, store_chunk}, {mask});
  exceptions_root_ = ex.root();
  return s;
}

Status BitmaskStore::erase(uint64_t chunk, uint64_t store_chunk) {
  ExceptionTree ex(*tm_, exceptions_root_);
  auto r = ex.remove({chunk, store_chunk});
  exceptions_root_ = ex.root();
  return r.status();
}

Status BitmaskStore::remove_bit(uint64_t chunk, const Exception& e, uint64_t b) {
  uint64_t rest = e.mask & ~b;
  if ((rest & live_) != 0) return put(chunk, e.store_chunk, rest);
  // Nobody live reads it any more (deleted snapshots' bits don't count).
  MS_TRY(erase(chunk, e.store_chunk));
  --exception_count_;
  if (e.store_chunk != kZeroChunk) MS_TRY(tm_->free_chunk(e.store_chunk));
  return Status::ok();
}

// ---------------------------------------------------------------- reads

Result<ChunkMapping> BitmaskStore::lookup(uint64_t chunk, const SnapshotInfo& snap, bool want_exclusive) {
  MS_ASSIGN_OR_RETURN(auto list, exceptions_of(chunk));
  ChunkMapping m;
  for (const Exception& e : list) {
    if (!(e.mask & bit(snap))) continue;
    m.kind = e.store_chunk == kZeroChunk ? ChunkMapping::Kind::kZero : ChunkMapping::Kind::kStore;
    m.store_chunk = e.store_chunk;
    if (want_exclusive) m.exclusive = (e.mask & live_) == bit(snap);
    return m;
  }
  return m;
}

// A chunk's exceptions are adjacent (keyed by chunk, then store chunk).
Status BitmaskStore::diff(const SnapshotInfo& a, const SnapshotInfo* b, uint64_t from,
                          const std::function<bool(uint64_t chunk)>& fn) {
  ExceptionTree ex(*tm_, exceptions_root_);
  auto covers = [&](const PairKey&, const MaskValue& v) {
    return std::pair{(v.mask & bit(a)) != 0, b && (v.mask & bit(*b)) != 0};
  };
  return diff_entries(ex, from, covers, fn);
}

// ---------------------------------------------------------------- origin writes

void BitmaskStore::reset_query(uint64_t chunk) {
  q_chunk_ = chunk;
  q_done_ = false;
}

Result<bool> BitmaskStore::query_next_remap() {
  if (q_done_) return false;
  q_done_ = true;  // never more than one copy
  MS_ASSIGN_OR_RETURN(auto list, exceptions_of(q_chunk_));
  uint64_t have = 0;
  for (const Exception& e : list) have |= e.mask;
  q_needed_ = live_ & ~have;
  return q_needed_ != 0;
}

Result<uint64_t> BitmaskStore::add_next_remap(CopyDescriptor* descriptor, bool zero) {
  MS_TRY(reserve(1));
  uint64_t chunk = kZeroChunk;
  uint64_t mask = q_needed_;
  bool fresh = true;
  if (zero) {
    // At most one zero exception per chunk: join it if there is one.
    MS_ASSIGN_OR_RETURN(auto list, exceptions_of(q_chunk_));
    for (const Exception& e : list)
      if (e.store_chunk == kZeroChunk) {
        mask |= e.mask;
        fresh = false;
      }
  } else {
    MS_ASSIGN_OR_RETURN(chunk, tm_->allocate_chunk());
  }
  MS_TRY(apply([&]() -> Status {
    MS_TRY(put(q_chunk_, chunk, mask));
    if (fresh) ++exception_count_;
    return Status::ok();
  }));
  *descriptor = {q_needed_, 0};
  return chunk;
}

// ---------------------------------------------------------------- snapshot writes

Result<CopyPlan> BitmaskStore::make_chunk_writeable(uint64_t chunk, const SnapshotInfo& snap) {
  MS_TRY(reserve(3));
  const uint64_t b = bit(snap);
  MS_ASSIGN_OR_RETURN(auto list, exceptions_of(chunk));
  std::optional<Exception> mine;
  for (const Exception& e : list)
    if (e.mask & b) mine = e;
  CopyPlan plan;
  if (mine && mine->store_chunk != kZeroChunk && (mine->mask & live_) == b) return plan;  // already its own
  MS_ASSIGN_OR_RETURN(uint64_t own, tm_->allocate_chunk());
  plan.dests = {own};
  if (!mine) {
    plan.source = CopyPlan::Source::kOrigin;
    plan.descriptor = {b, 0};
  } else {
    // Leave the shared (or zero) exception, taking a copy of its data along.
    plan.source = mine->store_chunk == kZeroChunk ? CopyPlan::Source::kZero : CopyPlan::Source::kStore;
    plan.source_chunk = mine->store_chunk;
    plan.descriptor = {mine->mask, 0};
  }
  MS_TRY(apply([&]() -> Status {
    if (mine) MS_TRY(remove_bit(chunk, *mine, b));
    MS_TRY(put(chunk, own, b));
    ++exception_count_;
    return Status::ok();
  }));
  return plan;
}

Result<CopyPlan> BitmaskStore::zero_chunk(uint64_t chunk, const SnapshotInfo& snap) {
  MS_TRY(reserve(3));
  const uint64_t b = bit(snap);
  MS_ASSIGN_OR_RETURN(auto list, exceptions_of(chunk));
  CopyPlan plan;  // zeroing never needs a copy here
  plan.descriptor = {b, 0};
  uint64_t zero_mask = 0;
  bool has_zero = false;
  std::optional<Exception> mine;
  for (const Exception& e : list) {
    if (e.store_chunk == kZeroChunk) {
      has_zero = true;
      zero_mask = e.mask;
      if (e.mask & b) return plan;  // already zero
    } else if (e.mask & b) {
      mine = e;
      plan.descriptor.a |= e.mask;  // its sharers see their sharing change
    }
  }
  MS_TRY(apply([&]() -> Status {
    if (mine) MS_TRY(remove_bit(chunk, *mine, b));
    MS_TRY(put(chunk, kZeroChunk, zero_mask | b));
    if (!has_zero) ++exception_count_;
    return Status::ok();
  }));
  return plan;
}

bool BitmaskStore::conflicts(const CopyDescriptor& d, const SnapshotInfo& snap) const {
  return (d.a & bit(snap)) != 0;
}

// ---------------------------------------------------------------- reclaim

Status BitmaskStore::reclaim_step(uint32_t budget) {
  TransactionManager::DeleteReserve may_use_reserve(*tm_);  // a full store must still empty
  if (sweep_ == 0) return Status::ok();
  std::vector<std::pair<PairKey, uint64_t>> batch;
  {
    ExceptionTree ex(*tm_, exceptions_root_);
    MS_TRY(ex.scan(cursor_, [&](const PairKey& k, const MaskValue& v) {
      batch.emplace_back(k, v.mask);
      return batch.size() < budget;
    }));
  }
  const bool pass_done = batch.size() < budget;
  Status stopped;
  for (size_t i = 0; i < batch.size(); ++i) {
    const PairKey k = batch[i].first;  // not a structured binding: captured below (clang 14)
    const uint64_t mask = batch[i].second;
    uint64_t keep = mask & live_;  // deleted bits go, pending ones too (harmless)
    if (keep == mask) continue;
    stopped = reserve(1);
    if (!stopped.is_ok()) {  // out of metadata space: resume here after a commit
      batch.resize(i);
      break;
    }
    MS_TRY(apply([&]() -> Status {
      if (keep) return put(k.hi, k.lo, keep);
      MS_TRY(erase(k.hi, k.lo));
      --exception_count_;
      return k.lo == kZeroChunk ? Status::ok() : tm_->free_chunk(k.lo);
    }));
  }
  if (pass_done && stopped.is_ok()) {
    // The pass is over: its bits are free once this commits.
    sweep_ = pending_;
    pending_ = 0;
    cursor_ = {};
  } else if (!batch.empty()) {
    cursor_ = next_key(batch.back().first);
  }
  tm_->mutable_store_area();
  return stopped;
}

// ---------------------------------------------------------------- introspection

StoreStats BitmaskStore::stats() {
  StoreStats s;
  fill_common_stats(s);
  s.format = "bitmask";
  s.exceptions = exception_count_;
  s.snapshot_slots_free = 64 - static_cast<uint64_t>(std::popcount(live_ | sweep_ | pending_));
  s.reclaim_active = sweep_ != 0;
  uint64_t chunks = std::max<uint64_t>(1, tm_->layout().origin_chunks());
  s.reclaim_progress = s.reclaim_active ? std::min(1.0, double(cursor_.hi) / double(chunks)) : 1.0;
  return s;
}

// ---------------------------------------------------------------- space use

// An exception's readers are the live bits of its mask. Deleting snapshot S
// frees exactly the exceptions whose only live bit is S's: the sweep drops
// an exception once no live bit is left in it (deleted bits do not count).
class BitmaskSpaceScan final : public SpaceScan {
 public:
  explicit BitmaskSpaceScan(BitmaskStore& store) : SpaceScan(store), st_(store) {}

  Status load() {
    total_ = st_.exception_count_;
    live_ = st_.live_;
    return st_.list_snapshots(0, [&](const SnapshotInfo& s) {
      id_of_bit_[s.store_key & 63] = s.id;
      return true;
    });
  }

  Result<bool> step(uint32_t budget) override {
    if (done_) return true;
    budget = std::max<uint32_t>(budget, 1);
    BitmaskStore::ExceptionTree ex(*st_.tm_, st_.exceptions_root_);
    uint32_t seen = 0;
    PairKey last{};
    MS_TRY(ex.scan(cursor_, [&](const PairKey& k, const MaskValue& v) {
      ++seen;
      last = k;
      if (k.lo != BitmaskStore::kZeroChunk) count(v.mask & live_);
      return seen < budget;
    }));
    visited_ += seen;
    if (seen < budget) done_ = true;
    else cursor_ = next_key(last);
    return done_;
  }

  std::vector<SnapshotSpace> result() const override {
    std::vector<SnapshotSpace> out;
    for (int b = 0; b < 64; ++b)
      if (live_ >> b & 1) out.push_back({id_of_bit_[b], exclusive_[b], shared_[b]});
    std::sort(out.begin(), out.end(), [](const SnapshotSpace& a, const SnapshotSpace& b) { return a.id < b.id; });
    return out;
  }

 private:
  void count(uint64_t readers) {
    if (readers == 0) {
      ++unreferenced_;  // every reader deleted: the sweep frees it
    } else if (std::has_single_bit(readers)) {
      ++exclusive_[std::countr_zero(readers)];
    } else {
      for (uint64_t m = readers; m; m &= m - 1) ++shared_[std::countr_zero(m)];
    }
  }

  BitmaskStore& st_;
  uint64_t live_ = 0;
  SnapshotId id_of_bit_[64] = {};
  uint64_t exclusive_[64] = {};
  uint64_t shared_[64] = {};
  PairKey cursor_{};
  bool done_ = false;
};

Result<std::unique_ptr<SpaceScan>> BitmaskStore::start_space_scan() {
  auto scan = std::make_unique<BitmaskSpaceScan>(*this);
  MS_TRY(scan->load());
  return std::unique_ptr<SpaceScan>(std::move(scan));
}

std::string BitmaskStore::mask_string(uint64_t mask) const { return fmt::format("{:#018x}", mask); }

Status BitmaskStore::dump(const std::function<bool(const DumpEntry&)>& fn) {
  std::map<uint64_t, SnapshotId> by_bit;
  MS_TRY(list_snapshots(0, [&](const SnapshotInfo& s) {
    by_bit[s.store_key] = s.id;
    return true;
  }));
  ExceptionTree ex(*tm_, exceptions_root_);
  PairKey from{};
  std::vector<std::pair<PairKey, uint64_t>> batch;
  for (;;) {
    batch.clear();
    MS_TRY(ex.scan(from, [&](const PairKey& k, const MaskValue& v) {
      batch.emplace_back(k, v.mask);
      return batch.size() < 256;
    }));
    for (auto& [k, mask] : batch) {
      DumpEntry d;
      d.chunk = k.hi;
      d.snapshots = mask_string(mask);
      d.zero = k.lo == kZeroChunk;
      d.store_chunk = d.zero ? 0 : k.lo;
      for (int i = 0; i < 64; ++i)
        if ((mask >> i) & 1 && by_bit.count(i)) d.live.push_back(by_bit[i]);
      if (!fn(d)) return Status::ok();
    }
    if (batch.size() < 256) return Status::ok();
    from = next_key(batch.back().first);
  }
}

void BitmaskStore::check(CheckReport& report) {
  const Layout& l = tm_->layout();
  CheckRefs refs(l, report);
  auto problem = [&](const std::string& p) { report.problem(p); };
  auto on_node = [&](const NodeVisit& v) { refs.meta(v.blocknr); };
  if ((live_ & sweep_) || (live_ & pending_) || (sweep_ & pending_))
    report.problem(fmt::format("live {}, sweep {} and pending {} masks overlap", mask_string(live_),
                               mask_string(sweep_), mask_string(pending_)));
  if (!sweep_ && pending_) report.problem("bits wait for a sweep but none is running");
  uint64_t table_bits = 0;
  check_common(report, [&](uint64_t b) { refs.meta(b); }, [&](const SnapshotInfo& s) {
    if (s.store_key >= 64) {
      report.problem(fmt::format("snapshot {}: bit {} is not a bit of a 64-bit mask", s.id, s.store_key));
      return;
    }
    if (table_bits & bit(s)) report.problem(fmt::format("snapshot {}: bit {} is used twice", s.id, s.store_key));
    table_bits |= bit(s);
    if (s.parent != kOriginId) report.problem(fmt::format("snapshot {} is a snapshot of a snapshot", s.id));
  });
  if (table_bits != live_)
    report.problem(fmt::format("the snapshot table uses bits {} but the live mask is {}", mask_string(table_bits),
                               mask_string(live_)));
  const uint64_t allowed = live_ | sweep_ | pending_;
  uint64_t entries = 0, chunk_seen = UINT64_MAX, chunk_bits = 0;
  ExceptionTree ex(*tm_, exceptions_root_);
  ex.walk(on_node, [&](const PairKey& k, const MaskValue& v) {
    ++entries;
    std::string where = fmt::format("exception (chunk {}, {} {})", k.hi,
                                    k.lo == kZeroChunk ? std::string("zeros") : "store chunk " + std::to_string(k.lo),
                                    mask_string(v.mask));
    if (k.hi != chunk_seen) chunk_seen = k.hi, chunk_bits = 0;
    if (k.hi >= l.origin_chunks()) report.problem(where + ": chunk is past the end of the origin");
    if (v.mask == 0) report.problem(where + ": no snapshot in it");
    if (v.mask & ~allowed) report.problem(where + ": holds bits of no snapshot");
    if (v.mask & chunk_bits) report.problem(where + ": a snapshot is in two exceptions of this chunk");
    chunk_bits |= v.mask;
    if (k.lo != kZeroChunk) refs.data(k.lo, where);
  }, problem);
  if (entries != exception_count_)
    report.problem(fmt::format("the tree holds {} exceptions but the commit record says {}", entries, exception_count_));
  refs.compare(*tm_);
  report.note(fmt::format("bitmask store: {} snapshots ({} slots free), {} exceptions, {}", snapshot_count_,
                          64 - std::popcount(allowed), entries, refs.space_note()));
}

}  // namespace multisnap
