#include "store/range/range_store.h"

#include <algorithm>
#include <unordered_map>

namespace multisnap {

namespace {
constexpr uint64_t kMinorMask = 0xffffffffull;
uint64_t family_base(uint64_t key) { return key & ~kMinorMask; }
uint64_t family_end(uint64_t key) { return key | kMinorMask; }
}  // namespace

std::string RangeStore::range_string(uint64_t lo, uint64_t hi) {
  if ((lo & kMinorMask) == 0 && (hi & kMinorMask) == kMinorMask)
    return fmt::format("{}..{}", lo >> 32, hi >> 32);  // whole families
  return key_string(lo) + ".." + key_string(hi);
}

std::string RangeStore::key_string(uint64_t key) {
  uint64_t major = key >> 32, minor = key & kMinorMask;
  if (minor == 0) return std::to_string(major);
  return fmt::format("{}.{}", major, (kMinorMask - minor) + 1);
}

// ---------------------------------------------------------------- lifecycle

Result<std::unique_ptr<RangeStore>> RangeStore::create(std::unique_ptr<TransactionManager> tm) {
  std::unique_ptr<RangeStore> s(new RangeStore(std::move(tm)));
  MS_TRY(s->init_common());
  MS_ASSIGN_OR_RETURN(s->exceptions_root_, ExceptionTree::create(*s->tm_));
  MS_ASSIGN_OR_RETURN(s->live_root_, LiveTree::create(*s->tm_));
  MS_TRY(s->commit());
  return s;
}

Result<std::unique_ptr<RangeStore>> RangeStore::open(std::unique_ptr<TransactionManager> tm) {
  std::unique_ptr<RangeStore> s(new RangeStore(std::move(tm)));
  s->load_common();
  s->load_specific();
  return s;
}

void RangeStore::load_specific() {
  RangeStoreAreaDisk d;
  std::memcpy(&d, tm_->store_area().data() + kStoreAreaSpecificOffset, sizeof d);
  exceptions_root_ = d.exceptions_root;
  live_root_ = d.live_root;
  exception_count_ = d.exception_count;
  reclaim_cursor_ = {d.reclaim_chunk, d.reclaim_key};
  reclaim_flags_ = d.reclaim_flags;
}

void RangeStore::save_specific(uint8_t* area) {
  RangeStoreAreaDisk d{};
  d.exceptions_root = exceptions_root_;
  d.live_root = live_root_;
  d.exception_count = exception_count_;
  d.reclaim_chunk = reclaim_cursor_.hi;
  d.reclaim_key = reclaim_cursor_.lo;
  d.reclaim_flags = reclaim_flags_;
  std::memcpy(area + kStoreAreaSpecificOffset, &d, sizeof d);
}

// ---------------------------------------------------------------- snapshots

Result<uint64_t> RangeStore::allocate_key(SnapshotRecord* parent) {
  if (!parent) return uint64_t{next_id_} << 32;
  if (parent->store_key & kMinorMask)
    return make_error(Code::kNotSupported,
                      "the range store makes snapshots of snapshots one level deep, and the parent is "
                      "itself a snapshot of a snapshot");
  if (parent->children >= kMinorMask - 1)
    return make_error(Code::kNoSpace, "the parent snapshot has had the maximum number of snapshots taken");
  uint64_t key = parent->store_key | (kMinorMask - parent->children);
  ++parent->children;
  return key;
}

Status RangeStore::on_created(const SnapshotInfo& info) {
  LiveTree live(*tm_, live_root_);
  MS_TRY(live.insert(info.store_key, info.id));
  live_root_ = live.root();
  return Status::ok();
}

Status RangeStore::on_deleted(const SnapshotInfo& info) {
  LiveTree live(*tm_, live_root_);
  MS_TRY(live.remove(info.store_key).status());
  live_root_ = live.root();
  if (reclaim_flags_ & kReclaimActive) {
    reclaim_flags_ |= kReclaimAgain;  // entries behind the cursor may now be dead too
  } else {
    reclaim_flags_ = kReclaimActive;
    reclaim_cursor_ = {};
  }
  return Status::ok();
}

Result<RangeStore::Range> RangeStore::atom_of(const SnapshotInfo& snap) {
  uint64_t key = snap.store_key;
  if (key & kMinorMask) return Range{key, key};
  // A snapshot of the origin: itself and its future children. Read the
  // record: the caller's copy of `children` may be older.
  MS_ASSIGN_OR_RETURN(auto now, find_snapshot(snap.id));
  if (!now) return make_error(Code::kNotFound, "there is no snapshot {}", snap.id);
  return Range{key, key | (kMinorMask - now->children)};
}

// ---------------------------------------------------------------- tree helpers

Result<std::optional<RangeStore::Entry>> RangeStore::covering(uint64_t chunk, uint64_t key) {
  ExceptionTree ex(*tm_, exceptions_root_);
  MS_ASSIGN_OR_RETURN(auto e, ex.floor({chunk, key}));
  if (e && e->key.hi == chunk && e->value.to >= key) return e;
  return std::optional<Entry>();
}

Result<std::optional<uint64_t>> RangeStore::first_live(uint64_t lo, uint64_t hi) {
  LiveTree live(*tm_, live_root_);
  MS_ASSIGN_OR_RETURN(auto e, live.lower_bound(lo));
  if (e && e->key <= hi) return std::optional<uint64_t>(e->key);
  return std::optional<uint64_t>();
}

Result<std::optional<uint64_t>> RangeStore::last_live(uint64_t lo, uint64_t hi) {
  LiveTree live(*tm_, live_root_);
  MS_ASSIGN_OR_RETURN(auto e, live.floor(hi));
  if (e && e->key >= lo) return std::optional<uint64_t>(e->key);
  return std::optional<uint64_t>();
}

Result<bool> RangeStore::only_live(uint64_t lo, uint64_t hi, uint64_t key) {
  MS_ASSIGN_OR_RETURN(auto first, first_live(lo, hi));
  if (!first || *first != key) return false;
  if (key == hi) return true;
  MS_ASSIGN_OR_RETURN(auto second, first_live(key + 1, hi));
  return !second.has_value();
}

Status RangeStore::put(uint64_t chunk, uint64_t from, uint64_t to, uint64_t store_chunk) {
  ExceptionTree ex(*tm_, exceptions_root_);
  Status s = ex.insert({chunk, from}, {to, store_chunk});
  exceptions_root_ = ex.root();
  return s;
}

Status RangeStore::erase(uint64_t chunk, uint64_t from) {
  ExceptionTree ex(*tm_, exceptions_root_);
  auto r = ex.remove({chunk, from});
  exceptions_root_ = ex.root();
  return r.status();
}

// ---------------------------------------------------------------- reads

Result<ChunkMapping> RangeStore::lookup(uint64_t chunk, const SnapshotInfo& snap, bool want_exclusive) {
  MS_ASSIGN_OR_RETURN(auto e, covering(chunk, snap.store_key));
  ChunkMapping m;
  if (!e) return m;
  m.kind = e->value.store_chunk == kZeroChunk ? ChunkMapping::Kind::kZero : ChunkMapping::Kind::kStore;
  m.store_chunk = e->value.store_chunk;
  if (want_exclusive) {
    MS_ASSIGN_OR_RETURN(m.exclusive, only_live(e->key.lo, e->value.to, snap.store_key));
  }
  return m;
}

// Each chunk's entries are adjacent in the tree: one walk notes which entry
// covers a's key and which covers b's.
Status RangeStore::diff(const SnapshotInfo& a, const SnapshotInfo* b, uint64_t from,
                        const std::function<bool(uint64_t chunk)>& fn) {
  ExceptionTree ex(*tm_, exceptions_root_);
  auto covers = [&](const PairKey& k, const RangeValue& v) {
    return std::pair{k.lo <= a.store_key && a.store_key <= v.to,
                     b && k.lo <= b->store_key && b->store_key <= v.to};
  };
  return diff_entries(ex, from, covers, fn);
}

// ---------------------------------------------------------------- origin writes

void RangeStore::reset_query(uint64_t chunk) {
  q_chunk_ = chunk;
  q_next_ = 0;
  q_done_ = false;
}

Result<bool> RangeStore::query_next_remap() {
  const uint64_t cap = key_cap();
  auto advance_past = [&](uint64_t hi) {
    if (hi >= cap) q_done_ = true;
    else q_next_ = hi + 1;
  };
  while (!q_done_ && q_next_ <= cap) {
    MS_ASSIGN_OR_RETURN(auto e, covering(q_chunk_, q_next_));
    if (e) {
      advance_past(e->value.to);
      continue;
    }
    // A gap starts at q_next_ and runs to the next entry of this chunk.
    ExceptionTree ex(*tm_, exceptions_root_);
    MS_ASSIGN_OR_RETURN(auto next, ex.lower_bound({q_chunk_, q_next_}));
    uint64_t gap_end = (next && next->key.hi == q_chunk_) ? next->key.lo - 1 : cap;
    gap_end = std::min(gap_end, cap);
    MS_ASSIGN_OR_RETURN(auto first, first_live(q_next_, gap_end));
    if (!first) {
      advance_past(gap_end);
      continue;
    }
    MS_ASSIGN_OR_RETURN(auto last, last_live(q_next_, gap_end));
    // Widen to whole families so the entry also serves future children.
    q_found_ = {std::max(q_next_, family_base(*first)), std::min(gap_end, family_end(*last))};
    return true;
  }
  q_done_ = true;
  return false;
}

Result<uint64_t> RangeStore::add_next_remap(CopyDescriptor* descriptor, bool zero) {
  MS_TRY(reserve(1));
  uint64_t chunk = kZeroChunk;
  if (!zero) {
    MS_ASSIGN_OR_RETURN(chunk, tm_->allocate_chunk());
  }
  MS_TRY(apply([&]() -> Status {
    MS_TRY(put(q_chunk_, q_found_.lo, q_found_.hi, chunk));
    ++exception_count_;
    return Status::ok();
  }));
  *descriptor = {q_found_.lo, q_found_.hi};
  if (q_found_.hi >= key_cap()) q_done_ = true;
  else q_next_ = q_found_.hi + 1;
  return chunk;
}

// ---------------------------------------------------------------- snapshot writes

// Cutting snapshot S's atom out of a shared entry e (chunk C, data D):
//
//   before:  [e.lo ........ atom ........ e.to] -> D
//   after:   [e.lo .. a-1] -> D      (if it serves a live snapshot)
//                         [atom]     (left to the caller)
//                                [b+1 .. e.to] -> D, or a new chunk when
//                                                 the left part kept D
Result<RangeStore::Carve> RangeStore::plan_carve(const Entry& e, Range atom) {
  Carve c;
  if (e.key.lo < atom.lo) {
    c.left = Range{e.key.lo, atom.lo - 1};
    MS_ASSIGN_OR_RETURN(auto f, first_live(c.left->lo, c.left->hi));
    if (!f) c.left.reset();
  }
  if (atom.hi < e.value.to) {
    c.right = Range{atom.hi + 1, e.value.to};
    MS_ASSIGN_OR_RETURN(auto f, first_live(c.right->lo, c.right->hi));
    if (!f) c.right.reset();
  }
  c.copy_right = c.left && c.right && e.value.store_chunk != kZeroChunk;
  return c;
}

Status RangeStore::apply_carve(uint64_t chunk, const Entry& e, const Carve& c, uint64_t right_chunk) {
  uint64_t data = e.value.store_chunk;
  MS_TRY(erase(chunk, e.key.lo));
  --exception_count_;
  if (c.left) {
    MS_TRY(put(chunk, c.left->lo, c.left->hi, data));
    ++exception_count_;
  }
  if (c.right) {
    MS_TRY(put(chunk, c.right->lo, c.right->hi, c.copy_right ? right_chunk : data));
    ++exception_count_;
  }
  if (!c.left && !c.right && data != kZeroChunk) MS_TRY(tm_->free_chunk(data));
  return Status::ok();
}

Result<CopyPlan> RangeStore::make_chunk_writeable(uint64_t chunk, const SnapshotInfo& snap) {
  MS_TRY(reserve(4));
  MS_ASSIGN_OR_RETURN(Range atom, atom_of(snap));
  MS_ASSIGN_OR_RETURN(auto e, covering(chunk, snap.store_key));
  CopyPlan plan;
  if (!e) {
    MS_ASSIGN_OR_RETURN(uint64_t n, tm_->allocate_chunk());
    MS_TRY(apply([&]() -> Status {
      MS_TRY(put(chunk, atom.lo, atom.hi, n));
      ++exception_count_;
      return Status::ok();
    }));
    plan.source = CopyPlan::Source::kOrigin;
    plan.dests = {n};
    plan.descriptor = {atom.lo, atom.hi};
    return plan;
  }
  plan.descriptor = {e->key.lo, e->value.to};
  MS_ASSIGN_OR_RETURN(bool exclusive, only_live(e->key.lo, e->value.to, snap.store_key));
  if (exclusive) {
    if (e->value.store_chunk != kZeroChunk) return plan;  // already writable: nothing to do
    MS_ASSIGN_OR_RETURN(uint64_t n, tm_->allocate_chunk());
    MS_TRY(apply([&] { return put(chunk, e->key.lo, e->value.to, n); }));
    plan.source = CopyPlan::Source::kZero;
    plan.dests = {n};
    return plan;
  }
  MS_ASSIGN_OR_RETURN(Carve carve, plan_carve(*e, atom));
  MS_ASSIGN_OR_RETURN(uint64_t own, tm_->allocate_chunk());
  uint64_t extra = 0;
  if (carve.copy_right) {
    auto r = tm_->allocate_chunk();
    if (!r.is_ok()) {
      tm_->free_chunk(own).ignore();  // undoes the allocation: nothing changed
      return r.status();
    }
    extra = *r;
  }
  MS_TRY(apply([&]() -> Status {
    MS_TRY(apply_carve(chunk, *e, carve, extra));
    MS_TRY(put(chunk, atom.lo, atom.hi, own));
    ++exception_count_;
    return Status::ok();
  }));
  plan.source = e->value.store_chunk == kZeroChunk ? CopyPlan::Source::kZero : CopyPlan::Source::kStore;
  plan.source_chunk = e->value.store_chunk;
  plan.dests = {own};
  if (carve.copy_right) plan.dests.push_back(extra);
  return plan;
}

Result<CopyPlan> RangeStore::zero_chunk(uint64_t chunk, const SnapshotInfo& snap) {
  MS_TRY(reserve(4));
  MS_ASSIGN_OR_RETURN(Range atom, atom_of(snap));
  MS_ASSIGN_OR_RETURN(auto e, covering(chunk, snap.store_key));
  CopyPlan plan;  // no copy unless a shared chunk must be split three ways
  if (!e) {
    MS_TRY(apply([&]() -> Status {
      MS_TRY(put(chunk, atom.lo, atom.hi, kZeroChunk));
      ++exception_count_;
      return Status::ok();
    }));
    plan.descriptor = {atom.lo, atom.hi};
    return plan;
  }
  // Everyone who shared e sees its sharing change.
  plan.descriptor = {e->key.lo, e->value.to};
  MS_ASSIGN_OR_RETURN(bool exclusive, only_live(e->key.lo, e->value.to, snap.store_key));
  if (exclusive) {
    if (e->value.store_chunk != kZeroChunk) {
      MS_TRY(apply([&]() -> Status {
        MS_TRY(tm_->free_chunk(e->value.store_chunk));
        return put(chunk, e->key.lo, e->value.to, kZeroChunk);
      }));
    }
    return plan;
  }
  MS_ASSIGN_OR_RETURN(Carve carve, plan_carve(*e, atom));
  uint64_t extra = 0;
  if (carve.copy_right) {
    MS_ASSIGN_OR_RETURN(extra, tm_->allocate_chunk());
  }
  MS_TRY(apply([&]() -> Status {
    MS_TRY(apply_carve(chunk, *e, carve, extra));
    MS_TRY(put(chunk, atom.lo, atom.hi, kZeroChunk));
    ++exception_count_;
    return Status::ok();
  }));
  if (carve.copy_right) {
    plan.source = CopyPlan::Source::kStore;
    plan.source_chunk = e->value.store_chunk;
    plan.dests = {extra};
  }
  return plan;
}

bool RangeStore::conflicts(const CopyDescriptor& d, const SnapshotInfo& snap) const {
  return snap.store_key >= d.a && snap.store_key <= d.b;
}

// ---------------------------------------------------------------- reclaim

Status RangeStore::reclaim_step(uint32_t budget) {
  TransactionManager::DeleteReserve may_use_reserve(*tm_);  // a full store must still empty
  if (!(reclaim_flags_ & kReclaimActive)) return Status::ok();
  std::vector<Entry> batch;
  {
    ExceptionTree ex(*tm_, exceptions_root_);
    MS_TRY(ex.scan(reclaim_cursor_, [&](const PairKey& k, const RangeValue& v) {
      batch.push_back({k, v});
      return batch.size() < budget;
    }));
  }
  const bool pass_done = batch.size() < budget;
  Status stopped;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Entry& e = batch[i];
    MS_ASSIGN_OR_RETURN(auto live, first_live(e.key.lo, e.value.to));
    if (live) continue;
    stopped = reserve(1);
    if (!stopped.is_ok()) {  // out of metadata space: resume here after a commit
      batch.resize(i);
      break;
    }
    MS_TRY(apply([&]() -> Status {
      MS_TRY(erase(e.key.hi, e.key.lo));
      --exception_count_;
      return e.value.store_chunk == kZeroChunk ? Status::ok() : tm_->free_chunk(e.value.store_chunk);
    }));
  }
  if (pass_done && stopped.is_ok()) {
    reclaim_cursor_ = {};
    if (reclaim_flags_ & kReclaimAgain) reclaim_flags_ = kReclaimActive;
    else reclaim_flags_ = 0;
  } else if (!batch.empty()) {
    reclaim_cursor_ = next_key(batch.back().key);
  }
  tm_->mutable_store_area();  // the cursor moved: worth a commit even if nothing was freed
  return stopped;
}

// ---------------------------------------------------------------- introspection

StoreStats RangeStore::stats() {
  StoreStats s;
  fill_common_stats(s);
  s.format = "range";
  s.exceptions = exception_count_;
  s.reclaim_active = reclaim_pending();
  uint64_t chunks = std::max<uint64_t>(1, tm_->layout().origin_chunks());
  s.reclaim_progress = s.reclaim_active ? std::min(1.0, double(reclaim_cursor_.hi) / double(chunks)) : 1.0;
  return s;
}

// ---------------------------------------------------------------- space use

// An entry (chunk, lo..to) -> n is read by the live snapshots whose keys lie
// in [lo, to]. Deleting snapshot S frees exactly the entries whose only live
// key is S's: reclaim drops an entry once no live key is left in its range
// and never splits one (an entry shared by S and T stays whole, for T). A
// child's key lies inside its parent's atom, so a parent's entries become
// shared with each snapshot taken of it, as they should.
//
// With the live keys sorted (12 bytes per live snapshot with its ID, plus
// 16 for the tallies), two binary searches give the index range [i, j) of an entry's
// readers: j - i == 1 is exclusive to keys_[i]; more is shared by all of
// them, added through a difference array so an entry costs O(log snapshots)
// however many snapshots share it.
class RangeSpaceScan final : public SpaceScan {
 public:
  explicit RangeSpaceScan(RangeStore& store) : SpaceScan(store), st_(store) {}

  Status load() {
    total_ = st_.exception_count_;
    RangeStore::LiveTree live(*st_.tm_, st_.live_root_);
    MS_TRY(live.scan(0, [&](const uint64_t& key, const uint64_t& id) {
      keys_.push_back(key);
      ids_.push_back(static_cast<SnapshotId>(id));
      return true;
    }));
    exclusive_.assign(keys_.size(), 0);
    shared_delta_.assign(keys_.size() + 1, 0);
    return Status::ok();
  }

  Result<bool> step(uint32_t budget) override {
    if (done_) return true;
    budget = std::max<uint32_t>(budget, 1);
    RangeStore::ExceptionTree ex(*st_.tm_, st_.exceptions_root_);
    uint32_t seen = 0;
    PairKey last{};
    MS_TRY(ex.scan(cursor_, [&](const PairKey& k, const RangeValue& v) {
      ++seen;
      last = k;
      if (v.store_chunk != kZeroChunk) count(k.lo, v.to);
      return seen < budget;
    }));
    visited_ += seen;
    if (seen < budget) done_ = true;
    else cursor_ = next_key(last);
    return done_;
  }

  std::vector<SnapshotSpace> result() const override {
    std::vector<SnapshotSpace> out(keys_.size());
    int64_t shared = 0;
    for (size_t i = 0; i < keys_.size(); ++i) {
      shared += shared_delta_[i];
      out[i] = {ids_[i], exclusive_[i], static_cast<uint64_t>(shared)};
    }
    std::sort(out.begin(), out.end(), [](const SnapshotSpace& a, const SnapshotSpace& b) { return a.id < b.id; });
    return out;
  }

 private:
  void count(uint64_t lo, uint64_t to) {
    auto first = std::lower_bound(keys_.begin(), keys_.end(), lo);
    auto end = std::upper_bound(first, keys_.end(), to);
    size_t i = static_cast<size_t>(first - keys_.begin()), j = static_cast<size_t>(end - keys_.begin());
    if (j == i) {
      ++unreferenced_;  // every reader deleted: reclaim frees it
    } else if (j - i == 1) {
      ++exclusive_[i];
    } else {
      ++shared_delta_[i];
      --shared_delta_[j];
    }
  }

  RangeStore& st_;
  std::vector<uint64_t> keys_;       // live keys, ascending (the LIVE tree's order)
  std::vector<SnapshotId> ids_;      // ids_[i]: the snapshot with key keys_[i]
  std::vector<uint64_t> exclusive_;  // by key index
  std::vector<int64_t> shared_delta_;
  PairKey cursor_{};
  bool done_ = false;
};

Result<std::unique_ptr<SpaceScan>> RangeStore::start_space_scan() {
  auto scan = std::make_unique<RangeSpaceScan>(*this);
  MS_TRY(scan->load());
  return std::unique_ptr<SpaceScan>(std::move(scan));
}

Status RangeStore::dump(const std::function<bool(const DumpEntry&)>& fn) {
  ExceptionTree ex(*tm_, exceptions_root_);
  std::vector<Entry> batch;
  PairKey from{};
  // In batches, so the callback never runs with tree blocks pinned.
  for (;;) {
    batch.clear();
    MS_TRY(ex.scan(from, [&](const PairKey& k, const RangeValue& v) {
      batch.push_back({k, v});
      return batch.size() < 256;
    }));
    for (const Entry& e : batch) {
      DumpEntry d;
      d.chunk = e.key.hi;
      d.snapshots = range_string(e.key.lo, e.value.to);
      d.zero = e.value.store_chunk == kZeroChunk;
      d.store_chunk = d.zero ? 0 : e.value.store_chunk;
      LiveTree live(*tm_, live_root_);
      MS_TRY(live.scan(e.key.lo, [&](const uint64_t& k, const uint64_t& id) {
        if (k > e.value.to) return false;
        d.live.push_back(static_cast<SnapshotId>(id));
        return true;
      }));
      if (!fn(d)) return Status::ok();
    }
    if (batch.size() < 256) return Status::ok();
    from = next_key(batch.back().key);
  }
}

void RangeStore::check(CheckReport& report) {
  const Layout& l = tm_->layout();
  CheckRefs refs(l, report);
  auto meta_ref = [&](uint64_t b) { refs.meta(b); };
  auto problem = [&](const std::string& p) { report.problem(p); };
  auto on_node = [&](const NodeVisit& v) { refs.meta(v.blocknr); };

  // Snapshot table, then the live keys it implies (R4).
  std::vector<std::pair<uint64_t, uint64_t>> table_keys;  // key, id
  std::unordered_map<uint64_t, uint32_t> children;        // top-level major -> children
  check_common(report, meta_ref, [&](const SnapshotInfo& s) {
    table_keys.emplace_back(s.store_key, s.id);
    uint64_t major = s.store_key >> 32, minor = s.store_key & kMinorMask;
    if (minor == 0) {
      children[major] = s.children;
      if (major != s.id)
        report.problem(fmt::format("snapshot {}: key {} does not match its ID", s.id, key_string(s.store_key)));
    }
    if (major == 0 || major >= next_id_)
      report.problem(fmt::format("snapshot {}: key {} is outside the key space", s.id, key_string(s.store_key)));
  });
  std::sort(table_keys.begin(), table_keys.end());
  std::vector<std::pair<uint64_t, uint64_t>> live_keys;
  LiveTree live(*tm_, live_root_);
  live.walk(on_node, [&](const uint64_t& k, const uint64_t& id) { live_keys.emplace_back(k, id); }, problem);
  if (live_keys != table_keys)
    report.problem(fmt::format("live-key index ({} keys) does not match the snapshot table ({} snapshots)",
                               live_keys.size(), table_keys.size()));
  std::vector<uint64_t> live_sorted;
  for (auto& [k, id] : table_keys) live_sorted.push_back(k);

  // Exceptions (R1, R2, R3, R5).
  uint64_t entries = 0;
  std::optional<Entry> prev;
  const uint64_t cap = key_cap();
  auto is_atom_start = [&](uint64_t k) {
    uint64_t minor = k & kMinorMask;
    auto it = children.find(k >> 32);
    return minor == 0 || it == children.end() || minor > kMinorMask - it->second;
  };
  auto is_atom_end = [&](uint64_t k) {
    uint64_t minor = k & kMinorMask;
    auto it = children.find(k >> 32);
    return minor == kMinorMask || it == children.end() || minor >= kMinorMask - it->second;
  };
  ExceptionTree ex(*tm_, exceptions_root_);
  ex.walk(on_node, [&](const PairKey& k, const RangeValue& v) {
    ++entries;
    std::string where = fmt::format("exception (chunk {}, {})", k.hi, range_string(k.lo, v.to));
    if (k.hi >= l.origin_chunks()) report.problem(where + ": chunk is past the end of the origin");
    if (v.to < k.lo) report.problem(where + ": range ends before it starts");
    if (v.to > cap) report.problem(where + ": range reaches past the last snapshot ID");
    if (prev && prev->key.hi == k.hi && prev->value.to >= k.lo)
      report.problem(where + fmt::format(": overlaps the entry starting at {}", key_string(prev->key.lo)));
    if (!is_atom_start(k.lo) || !is_atom_end(v.to))
      report.problem(where + ": range does not start and end on snapshot boundaries");
    if (v.store_chunk != kZeroChunk) refs.data(v.store_chunk, where);
    if (!reclaim_pending()) {
      auto it = std::lower_bound(live_sorted.begin(), live_sorted.end(), k.lo);
      if (it == live_sorted.end() || *it > v.to) report.problem(where + ": serves no live snapshot (leaked)");
    }
    prev = Entry{k, v};
  }, problem);
  if (entries != exception_count_)
    report.problem(fmt::format("the tree holds {} exceptions but the commit record says {}", entries, exception_count_));

  refs.compare(*tm_);
  report.note(fmt::format("range store: {} snapshots, {} exceptions, {}", snapshot_count_, entries,
                          refs.space_note()));
}

}  // namespace multisnap
