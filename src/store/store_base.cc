#include "store/store_base.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "util/checksum.h"

namespace multisnap {

namespace {
constexpr uint64_t kNameSeed = 0x656d616e70616e73ull;
using SnapshotTree = BTree<SnapshotTableTraits>;
using NameTree = BTree<NameTraits>;
using PropertyTree = BTree<PropertyTraits>;
}  // namespace

void SnapshotRecord::encode(uint8_t* p) const {
  SnapshotRecordDisk d{};
  d.store_key = store_key;
  d.created_ns = created_ns;
  d.parent = parent;
  d.children = children;
  size_t n = std::min(name.size(), kMaxSnapshotName);
  d.name_len = static_cast<uint8_t>(n);
  d.flags = flags;
  std::memcpy(d.uuid, uuid.bytes.data(), 16);
  std::memcpy(d.name, name.data(), n);
  std::memcpy(p, &d, sizeof d);
}

SnapshotRecord SnapshotRecord::decode(const uint8_t* p) {
  SnapshotRecordDisk d;
  std::memcpy(&d, p, sizeof d);
  SnapshotRecord r;
  r.store_key = d.store_key;
  r.created_ns = d.created_ns;
  r.parent = d.parent;
  r.children = d.children;
  r.flags = d.flags;
  std::memcpy(r.uuid.bytes.data(), d.uuid, 16);
  r.name.assign(d.name, std::min<size_t>(d.name_len, kMaxSnapshotName));
  return r;
}

SpaceScan::SpaceScan(const ExceptionStore& store)
    : store_(store), last_id_at_start_(store.last_snapshot_id()), count_at_start_(store.snapshot_count()) {}

bool SpaceScan::snapshots_changed() const {
  return store_.last_snapshot_id() != last_id_at_start_ || store_.snapshot_count() != count_at_start_;
}

Result<std::vector<SnapshotSpace>> ExceptionStore::space_use() {
  MS_ASSIGN_OR_RETURN(auto scan, start_space_scan());
  for (;;) {
    MS_ASSIGN_OR_RETURN(bool done, scan->step(1u << 16));
    if (done) return scan->result();
  }
}

Status validate_snapshot_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxSnapshotName)
    return make_error(Code::kInvalidArgument, "snapshot name '{}' must be 1 to {} characters", name,
                      kMaxSnapshotName);
  bool all_digits = true;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':' || c == '@' || c == '+';
    if (!ok)
      return make_error(Code::kInvalidArgument,
                        "snapshot name '{}' may only hold letters, digits and . _ - : @ +", name);
    if (c < '0' || c > '9') all_digits = false;
  }
  if (all_digits)
    return make_error(Code::kInvalidArgument, "snapshot name '{}' is all digits, which reads as an ID", name);
  return Status::ok();
}

CheckRefs::CheckRefs(const Layout& layout, CheckReport& report)
    : l_(layout), report_(report), meta_refs_(layout.meta_blocks, 0), data_refs_(layout.data_chunks, false) {}

void CheckRefs::meta(uint64_t b) {
  uint8_t* n = nullptr;
  if (b >= l_.meta_start && b < l_.meta_start + l_.meta_blocks) {
    n = &meta_refs_[b - l_.meta_start];
  } else if (l_.shared_space() && l_.in_data_area(b)) {
    n = &borrowed_refs_[b];
  } else {
    report_.problem(fmt::format("tree node at block {} lies outside the metadata area{}", b,
                                l_.shared_space() ? " and the data area" : ""));
    return;
  }
  if (*n < 2 && ++*n == 2) report_.problem(fmt::format("metadata block {} is referenced more than once", b));
}

void CheckRefs::data(uint64_t c, const std::string& where) {
  if (c >= l_.data_chunks) report_.problem(fmt::format("{}: store chunk {} is past the data area", where, c));
  else if (data_refs_[c]) report_.problem(fmt::format("{}: store chunk {} is referenced twice", where, c));
  else data_refs_[c] = true;
}

void CheckRefs::compare(TransactionManager& tm) {
  auto data_bits = tm.data_space().committed_bits();
  if (!data_bits.is_ok()) {
    report_.problem("cannot read the data space bitmaps: " + data_bits.status().to_string());
    return;
  }
  uint64_t leaks = 0;
  auto leak = [&](const std::string& text) {
    if (++leaks <= 20) report_.problem(text);
  };
  // The metadata bitmap: the pool, then (format 3) blocks in borrowed chunks.
  std::vector<bool> pool_bits(l_.meta_blocks, false);
  std::map<uint64_t, uint64_t> meta_chunks;  // data chunk -> its metadata blocks in use
  Status walked = tm.meta_space().for_each_committed(0, [&](uint64_t unit) {
    ++meta_used_;
    const uint64_t b = l_.meta_start + unit;
    if (unit < l_.meta_blocks) {
      pool_bits[unit] = true;
      return;
    }
    if (!l_.in_data_area(b)) {
      report_.problem(fmt::format("metadata block {} is marked in use but lies outside the pool and the data area", b));
      return;
    }
    ++meta_chunks[l_.chunk_of_block(b)];
    if (!borrowed_refs_.count(b)) leak(fmt::format("metadata block {} (in borrowed data chunk {}) is allocated but "
                                                   "unused (leaked)", b, l_.chunk_of_block(b)));
  });
  if (!walked.is_ok()) {
    report_.problem("cannot read the metadata space bitmaps: " + walked.to_string());
    return;
  }
  for (auto& [b, n] : borrowed_refs_) {
    auto it = meta_chunks.find(l_.chunk_of_block(b));
    bool alloc = false;
    if (it != meta_chunks.end()) {
      auto bit = tm.meta_space().is_allocated_committed(b - l_.meta_start);
      alloc = bit.is_ok() && *bit;
    }
    if (!alloc)
      report_.problem(fmt::format("metadata block {} (in data chunk {}) is in use but marked free", b,
                                  l_.chunk_of_block(b)));
  }
  borrowed_chunks_ = meta_chunks.size();
  for (uint64_t c = 0; c < l_.data_chunks; ++c) {
    bool alloc = (*data_bits)[c];
    bool meta = meta_chunks.count(c) > 0;
    data_used_ += alloc;
    if (data_refs_[c] && meta)
      report_.problem(fmt::format("store chunk {} holds data of an exception and {} metadata blocks (double use)",
                                  c, meta_chunks[c]));
    if (data_refs_[c] && !alloc) report_.problem(fmt::format("store chunk {} is in use but marked free", c));
    if (meta && !alloc)
      report_.problem(fmt::format("store chunk {} holds {} metadata blocks but is marked free in the data bitmap", c,
                                  meta_chunks[c]));
    if (!data_refs_[c] && !meta && alloc) leak(fmt::format("store chunk {} is allocated but unused (leaked)", c));
  }
  for (uint64_t b = 0; b < l_.meta_blocks; ++b) {
    bool alloc = pool_bits[b];
    if (meta_refs_[b] && !alloc)
      report_.problem(fmt::format("metadata block {} is in use but marked free", l_.meta_start + b));
    if (!meta_refs_[b] && alloc) leak(fmt::format("metadata block {} is allocated but unused (leaked)", l_.meta_start + b));
  }
  if (leaks > 20) report_.problem(fmt::format("... {} leaked chunks and blocks in all", leaks));
  if (data_used_ != tm.data_space().used())
    report_.problem(fmt::format("data bitmap has {} chunks in use, the commit record says {}", data_used_,
                                tm.data_space().used()));
  if (meta_used_ != tm.meta_space().used())
    report_.problem(fmt::format("metadata bitmap has {} blocks in use, the commit record says {}", meta_used_,
                                tm.meta_space().used()));
  // Bits past each map's last unit must be 0: a grow makes them free units.
  for (SpaceMap* map : {&tm.data_space(), &tm.meta_space()}) {
    auto stray = map->committed_bits_past_end();
    if (!stray.is_ok()) report_.problem("cannot read the space bitmaps: " + stray.status().to_string());
    else if (*stray > 0)
      report_.problem(fmt::format("the {} space map has {} units marked in use past its end (unit {}); a grow "
                                  "would hand them out twice",
                                  map == &tm.data_space() ? "data" : "metadata", *stray, map->total()));
  }
  if (borrowed_chunks_ != tm.committed_borrowed_chunks())
    report_.problem(fmt::format("{} data chunks hold metadata blocks, the commit record says {}", borrowed_chunks_,
                                tm.committed_borrowed_chunks()));
}

std::string CheckRefs::space_note() const {
  uint64_t pool = static_cast<uint64_t>(std::count_if(meta_refs_.begin(), meta_refs_.end(), [](uint8_t n) { return n > 0; }));
  return fmt::format("{} of {} data chunks ({} holding metadata), {} metadata blocks ({} in the pool of {})",
                     data_used_, l_.data_chunks, borrowed_chunks_, meta_used_, pool, l_.meta_blocks);
}

StoreBase::StoreBase(std::unique_ptr<TransactionManager> tm) : tm_(std::move(tm)) {}

uint64_t StoreBase::name_hash(std::string_view name) {
  return checksum64(name.data(), name.size(), kNameSeed);
}

SnapshotInfo StoreBase::to_info(uint64_t id, const SnapshotRecord& r) {
  return {static_cast<SnapshotId>(id), r.parent, r.name, r.created_ns, r.store_key, r.children, r.uuid, r.flags};
}

Status StoreBase::init_common() {
  MS_ASSIGN_OR_RETURN(snapshots_root_, SnapshotTree::create(*tm_));
  MS_ASSIGN_OR_RETURN(names_root_, NameTree::create(*tm_));
  next_id_ = 1;
  snapshot_count_ = 0;
  return Status::ok();
}

void StoreBase::load_common() {
  StoreAreaCommonDisk d;
  std::memcpy(&d, tm_->store_area().data(), sizeof d);
  snapshots_root_ = d.snapshots_root;
  names_root_ = d.names_root;
  next_id_ = d.next_snapshot_id;
  snapshot_count_ = d.live_snapshots;
  origin_changed_at_ = d.origin_changed_at;
  receive_.base = d.receive_base;
  std::memcpy(receive_.target.bytes.data(), d.receive_target, 16);
  receive_.origin_changed_before = d.receive_origin_changed_before;
  properties_root_ = d.properties_root;
}

Result<std::optional<std::string>> StoreBase::get_property(uint64_t id) {
  if (properties_root_ == 0) return std::optional<std::string>();
  PropertyTree t(*tm_, properties_root_);
  MS_ASSIGN_OR_RETURN(auto v, t.lookup(id));
  if (!v) return std::optional<std::string>();
  return std::optional<std::string>(v->bytes);
}

Status StoreBase::set_property(uint64_t id, const std::optional<std::string>& value) {
  if (value && value->size() > kMaxPropertyBytes)
    return make_error(Code::kInvalidArgument, "a property holds at most {} bytes", kMaxPropertyBytes);
  if (!value && properties_root_ == 0) return Status::ok();
  MS_TRY(reserve(properties_root_ == 0 ? 2 : 1));
  return apply([&]() -> Status {
    if (properties_root_ == 0) {
      MS_ASSIGN_OR_RETURN(properties_root_, PropertyTree::create(*tm_));
    }
    PropertyTree t(*tm_, properties_root_);
    Status s = value ? t.insert(id, PropertyValue{*value}) : t.remove(id).status();
    properties_root_ = t.root();
    tm_->mutable_store_area();
    return s;
  });
}

bool StoreBase::record_origin_change() {
  if (next_id_ == 1 || origin_changed_at_ == next_id_ - 1) return false;
  origin_changed_at_ = next_id_ - 1;
  tm_->mutable_store_area();  // a change worth a commit
  return true;
}

bool StoreBase::origin_change_uncommitted() const {
  StoreAreaCommonDisk d;
  std::memcpy(&d, tm_->committed_store_area().data(), sizeof d);
  return d.origin_changed_at != origin_changed_at_;
}

void StoreBase::set_pending_receive(const PendingReceive& p) {
  receive_ = p;
  tm_->mutable_store_area();
}

void StoreBase::set_origin_changed_at(SnapshotId id) {
  origin_changed_at_ = id;
  tm_->mutable_store_area();
}

Result<bool> StoreBase::mark_written(SnapshotId id) {
  SnapshotTree snaps(*tm_, snapshots_root_);
  MS_ASSIGN_OR_RETURN(auto rec, snaps.lookup(id));
  if (!rec) return make_error(Code::kNotFound, "there is no snapshot {}", id);
  if (rec->flags & kSnapshotWritten) return false;
  MS_TRY(reserve(1));
  rec->flags |= kSnapshotWritten;
  MS_TRY(apply([&]() -> Status {
    SnapshotTree t(*tm_, snapshots_root_);
    Status s = t.insert(id, *rec);
    snapshots_root_ = t.root();
    return s;
  }));
  return true;
}

Status StoreBase::apply(const std::function<Status()>& change) {
  Status s = change();
  if (!s.is_ok()) return tm_->fail(s.annotate("updating the store"));
  return s;
}

Status StoreBase::reserve(uint64_t tree_ops) {
  // Every tree here has kOpReserve 16: the bound for any of them.
  return tm_->reserve_meta(tree_ops * BTree<SnapshotTableTraits>::kOpReserve, /*keep_delete_reserve=*/true);
}

Status StoreBase::commit() {
  StoreAreaCommonDisk d{};
  d.snapshots_root = snapshots_root_;
  d.names_root = names_root_;
  d.next_snapshot_id = next_id_;
  d.live_snapshots = snapshot_count_;
  d.origin_changed_at = origin_changed_at_;
  d.receive_base = receive_.base;
  std::memcpy(d.receive_target, receive_.target.bytes.data(), 16);
  d.receive_origin_changed_before = receive_.origin_changed_before;
  d.properties_root = properties_root_;
  StoreArea next{};
  std::memcpy(next.data(), &d, sizeof d);
  save_specific(next.data());
  if (next != tm_->store_area()) tm_->mutable_store_area() = next;
  return tm_->commit();
}

Result<SnapshotInfo> StoreBase::create_snapshot(std::optional<SnapshotId> parent, std::string name,
                                                uint64_t now_ns, std::optional<Uuid> uuid) {
  if (!uuid) {
    MS_ASSIGN_OR_RETURN(Uuid fresh, random_uuid());
    uuid = fresh;
  }
  if (!name.empty()) {
    MS_TRY(validate_snapshot_name(name));
    MS_ASSIGN_OR_RETURN(auto existing, find_snapshot(std::string_view(name)));
    if (existing)
      return make_error(Code::kExists, "a snapshot named '{}' already exists (ID {})", name, existing->id);
  }
  if (next_id_ == UINT32_MAX)
    return make_error(Code::kNoSpace, "all 2^32-1 snapshot IDs have been used");
  MS_TRY(reserve(5));  // records (new and parent), name, the format's own index
  std::optional<SnapshotRecord> parent_record;
  if (parent && *parent != kOriginId) {
    SnapshotTree snaps(*tm_, snapshots_root_);
    MS_ASSIGN_OR_RETURN(auto pr, snaps.lookup(*parent));
    if (!pr) return make_error(Code::kNotFound, "there is no snapshot {}", *parent);
    parent_record = std::move(*pr);
  }
  MS_ASSIGN_OR_RETURN(uint64_t key, allocate_key(parent_record ? &*parent_record : nullptr));
  SnapshotRecord rec;
  rec.store_key = key;
  rec.created_ns = now_ns;
  rec.parent = parent.value_or(kOriginId);
  rec.name = name;
  rec.uuid = *uuid;
  SnapshotId id = next_id_;
  SnapshotInfo info = to_info(id, rec);
  MS_TRY(apply([&]() -> Status {
    SnapshotTree snaps(*tm_, snapshots_root_);
    if (parent_record) MS_TRY(snaps.insert(*parent, *parent_record));
    Status s = snaps.insert(id, rec);
    snapshots_root_ = snaps.root();
    MS_TRY(s);
    if (!name.empty()) {
      NameTree names(*tm_, names_root_);
      s = names.insert({name_hash(name), id}, {id});
      names_root_ = names.root();
      MS_TRY(s);
    }
    ++next_id_;
    ++snapshot_count_;
    return on_created(info);
  }));
  return info;
}

Status StoreBase::delete_snapshot(SnapshotId id) {
  TransactionManager::DeleteReserve may_use_reserve(*tm_);  // a full store must still empty
  MS_ASSIGN_OR_RETURN(auto found, find_snapshot(id));
  if (!found) return make_error(Code::kNotFound, "there is no snapshot {}", id);
  MS_TRY(reserve(3));
  return apply([&]() -> Status {
    SnapshotTree snaps(*tm_, snapshots_root_);
    Status s = snaps.remove(id).status();
    snapshots_root_ = snaps.root();
    MS_TRY(s);
    if (!found->name.empty()) {
      NameTree names(*tm_, names_root_);
      s = names.remove({name_hash(found->name), id}).status();
      names_root_ = names.root();
      MS_TRY(s);
    }
    --snapshot_count_;
    return on_deleted(*found);
  });
}

Result<std::optional<SnapshotInfo>> StoreBase::find_snapshot(SnapshotId id) {
  SnapshotTree snaps(*tm_, snapshots_root_);
  MS_ASSIGN_OR_RETURN(auto r, snaps.lookup(id));
  if (!r) return std::optional<SnapshotInfo>();
  return std::optional<SnapshotInfo>(to_info(id, *r));
}

Result<std::optional<SnapshotInfo>> StoreBase::find_snapshot(std::string_view name) {
  NameTree names(*tm_, names_root_);
  uint64_t h = name_hash(name);
  std::vector<uint64_t> candidates;
  MS_TRY(names.scan({h, 0}, [&](const PairKey& k, const U64Value&) {
    if (k.hi != h) return false;
    candidates.push_back(k.lo);
    return true;
  }));
  for (uint64_t id : candidates) {
    MS_ASSIGN_OR_RETURN(auto info, find_snapshot(static_cast<SnapshotId>(id)));
    if (info && info->name == name) return info;
  }
  return std::optional<SnapshotInfo>();
}

Result<std::optional<SnapshotInfo>> StoreBase::newest_snapshot() {
  SnapshotTree snaps(*tm_, snapshots_root_);
  MS_ASSIGN_OR_RETURN(auto e, snaps.floor(UINT64_MAX));
  if (!e) return std::optional<SnapshotInfo>();
  return std::optional<SnapshotInfo>(to_info(e->key, e->value));
}

Status StoreBase::list_snapshots(SnapshotId from, const std::function<bool(const SnapshotInfo&)>& fn) {
  SnapshotTree snaps(*tm_, snapshots_root_);
  return snaps.scan(from, [&](const uint64_t& id, const SnapshotRecord& r) { return fn(to_info(id, r)); });
}

void StoreBase::fill_common_stats(StoreStats& s) {
  const Layout& l = tm_->layout();
  s.chunk_size = l.chunk_size;
  s.origin_size = l.origin_size;
  s.data_chunks_total = tm_->data_space().total();
  s.data_chunks_used = tm_->data_space().used() - tm_->borrowed_chunks();
  s.meta_blocks_total = tm_->layout().meta_blocks;
  s.meta_blocks_used = tm_->meta_space().used();
  s.meta_chunks_borrowed = tm_->borrowed_chunks();
  s.meta_blocks_borrowed_free = tm_->borrowed_chunks() * tm_->layout().chunk_blocks() - tm_->meta_borrowed_used();
  s.shared_space = tm_->layout().shared_space();
  s.store_bytes = l.store_size;
  s.growable = l.growable();
  s.max_store_bytes = l.growable() ? std::max(l.store_size, l.data_start + l.capacity_chunks() * l.chunk_size)
                                   : l.store_size;
  s.snapshots = snapshot_count_;
  s.generation = tm_->committed_generation();
}

void StoreBase::check_common(CheckReport& report, const std::function<void(uint64_t)>& meta_ref,
                             const std::function<void(const SnapshotInfo&)>& on_snapshot) {
  auto problem = [&](const std::string& p) { report.problem(p); };
  auto on_node = [&](const NodeVisit& v) { meta_ref(v.blocknr); };
  uint64_t count = 0;
  std::vector<std::pair<uint64_t, std::string>> named;
  SnapshotTree snaps(*tm_, snapshots_root_);
  snaps.walk(on_node, [&](const uint64_t& id, const SnapshotRecord& r) {
    ++count;
    if (id == 0 || id >= next_id_)
      report.problem(fmt::format("snapshot table: ID {} is outside 1..{}", id, next_id_ - 1));
    if (r.uuid.is_nil()) report.problem(fmt::format("snapshot {}: its uuid is missing", id));
    if (r.parent >= id && r.parent != kOriginId)
      report.problem(fmt::format("snapshot {}: parent {} is not older than it", id, r.parent));
    if (!r.name.empty()) {
      if (!validate_snapshot_name(r.name).is_ok())
        report.problem(fmt::format("snapshot {}: invalid name '{}'", id, r.name));
      named.emplace_back(id, r.name);
    }
    on_snapshot(to_info(id, r));
  }, problem);
  if (count != snapshot_count_)
    report.problem(fmt::format("snapshot table holds {} snapshots but the commit record says {}", count,
                               snapshot_count_));
  if (properties_root_ != 0) {
    PropertyTree props(*tm_, properties_root_);
    props.walk(on_node, [&](const uint64_t&, const PropertyValue&) {}, problem);
  }
  uint64_t name_entries = 0;
  NameTree names(*tm_, names_root_);
  std::vector<std::pair<uint64_t, uint64_t>> name_keys;
  names.walk(on_node, [&](const PairKey& k, const U64Value& v) {
    ++name_entries;
    name_keys.emplace_back(k.hi, k.lo);
    if (v.v != k.lo) report.problem(fmt::format("name index: entry for ID {} holds {}", k.lo, v.v));
  }, problem);
  std::sort(name_keys.begin(), name_keys.end());
  for (auto& [id, name] : named) {
    if (!std::binary_search(name_keys.begin(), name_keys.end(), std::make_pair(name_hash(name), id)))
      report.problem(fmt::format("name index: snapshot {} ('{}') is missing", id, name));
  }
  if (name_entries != named.size())
    report.problem(fmt::format("name index holds {} entries for {} named snapshots", name_entries,
                               named.size()));
}

}  // namespace multisnap
