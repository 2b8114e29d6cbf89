// StoreBase: what both exception stores share: the snapshot table (a B-tree
// of snapshot records by ID, and one of names), the common part of the
// store area, commit, and the checks of those trees. A store supplies the
// hooks that give a new snapshot its store key and react to create/delete.
//
// Store area (the 512 opaque bytes of the commit record): bytes 0..63 are
// common (StoreAreaCommonDisk), 64..511 belong to the store format
// (RangeStoreAreaDisk, BitmaskStoreAreaDisk); docs/format.md, section 7.
#pragma once

#include <unordered_map>

#include "store/exception_store.h"
#include "store/tree_traits.h"

namespace multisnap {

// The store area's common part (docs/format.md, section 7). Little-endian,
// like every on-disk struct here: copied in and out with memcpy.
struct StoreAreaCommonDisk {
  uint64_t snapshots_root;
  uint64_t names_root;
  uint32_t next_snapshot_id;
  uint32_t live_snapshots;
  uint32_t origin_changed_at;  // the highest ID given out when the origin last changed
  uint32_t receive_base;       // pending receive: base snapshot ID (0: a full stream)
  uint8_t receive_target[16];  // pending receive: uuid it will create (zero: none)
  uint32_t receive_origin_changed_before;
  uint32_t reserved;
  uint64_t properties_root;    // 0: no property was ever set
};
static_assert(sizeof(StoreAreaCommonDisk) == 64);
static_assert(offsetof(StoreAreaCommonDisk, names_root) == 8);
static_assert(offsetof(StoreAreaCommonDisk, next_snapshot_id) == 16);
static_assert(offsetof(StoreAreaCommonDisk, live_snapshots) == 20);
static_assert(offsetof(StoreAreaCommonDisk, origin_changed_at) == 24);
static_assert(offsetof(StoreAreaCommonDisk, receive_base) == 28);
static_assert(offsetof(StoreAreaCommonDisk, receive_target) == 32);
static_assert(offsetof(StoreAreaCommonDisk, receive_origin_changed_before) == 48);
static_assert(offsetof(StoreAreaCommonDisk, reserved) == 52);
static_assert(offsetof(StoreAreaCommonDisk, properties_root) == 56);
// Where the format's part of the store area starts, and its size.
constexpr size_t kStoreAreaSpecificOffset = sizeof(StoreAreaCommonDisk);
constexpr size_t kStoreAreaSpecificSize = kStoreAreaSize - kStoreAreaSpecificOffset;

// The snapshot table's value (112 bytes on disk; docs/format.md).
struct SnapshotRecordDisk {
  uint64_t store_key;
  uint64_t created_ns;
  uint32_t parent;
  uint32_t children;
  uint8_t name_len;
  uint8_t reserved[3];
  uint32_t flags;
  uint8_t uuid[16];
  char name[kMaxSnapshotName];
};
static_assert(sizeof(SnapshotRecordDisk) == 112);
static_assert(offsetof(SnapshotRecordDisk, flags) == 28);
static_assert(offsetof(SnapshotRecordDisk, uuid) == 32);
static_assert(offsetof(SnapshotRecordDisk, name) == 48);

struct SnapshotRecord {
  uint64_t store_key = 0;
  uint64_t created_ns = 0;
  uint32_t parent = 0;
  uint32_t children = 0;  // snapshots ever made of this one
  uint32_t flags = 0;
  Uuid uuid;
  std::string name;

  void encode(uint8_t* p) const;
  static SnapshotRecord decode(const uint8_t* p);
};
struct SnapshotTableTraits {
  using Key = uint64_t;
  using Value = SnapshotRecord;
  static constexpr uint32_t kTreeKind = tree_kind::kSnapshots;
  static constexpr uint16_t kKeySize = 8;
  static constexpr uint16_t kValueSize = sizeof(SnapshotRecordDisk);
  static void encode_key(const Key& k, uint8_t* p) { store_le(p, k); }
  static Key decode_key(const uint8_t* p) { return load_le<uint64_t>(p); }
  static void encode_value(const Value& v, uint8_t* p) { v.encode(p); }
  static Value decode_value(const uint8_t* p) { return SnapshotRecord::decode(p); }
  static bool less(const Key& a, const Key& b) { return a < b; }
  static std::string key_string(const Key& k) { return "snapshot " + std::to_string(k); }
};
using NameTraits = PairKeyTraits<tree_kind::kNames, U64Value, 8>;

// What check() collects while walking the trees, and the comparison with
// the committed space maps at the end (leaks, double references, counters).
class CheckRefs {
 public:
  CheckRefs(const Layout& layout, CheckReport& report);
  // A tree node at `blocknr`.
  void meta(uint64_t blocknr);
  // A store chunk referenced by an exception (`where` names it).
  void data(uint64_t chunk, const std::string& where);
  // Reports leaks, blocks in use but free, and counter mismatches.
  void compare(TransactionManager& tm);
  // Data chunks in use (data and borrowed by metadata), metadata blocks in
  // use (pool and borrowed chunks), and how many chunks metadata borrowed.
  uint64_t data_used() const { return data_used_; }
  uint64_t meta_used() const { return meta_used_; }
  uint64_t borrowed_chunks() const { return borrowed_chunks_; }
  // "N of M data chunks (K holding metadata), B metadata blocks (P in the pool of Q)"
  std::string space_note() const;

 private:
  const Layout& l_;
  CheckReport& report_;
  std::vector<uint8_t> meta_refs_;                      // pool blocks
  std::unordered_map<uint64_t, uint8_t> borrowed_refs_;  // blocks in data chunks
  std::vector<bool> data_refs_;
  uint64_t data_used_ = 0, meta_used_ = 0, borrowed_chunks_ = 0;
};

class StoreBase : public ExceptionStore {
 public:
  TransactionManager& tm() override { return *tm_; }

  Result<SnapshotInfo> create_snapshot(std::optional<SnapshotId> parent, std::string name, uint64_t now_ns,
                                       std::optional<Uuid> uuid = std::nullopt) override;
  Result<std::optional<SnapshotInfo>> newest_snapshot() override;
  SnapshotId last_snapshot_id() const override { return next_id_ - 1; }
  Result<bool> mark_written(SnapshotId id) override;
  SnapshotId origin_changed_at() const override { return origin_changed_at_; }
  bool record_origin_change() override;
  bool origin_change_uncommitted() const override;
  Result<std::optional<std::string>> get_property(uint64_t id) override;
  Status set_property(uint64_t id, const std::optional<std::string>& value) override;
  const PendingReceive& pending_receive() const override { return receive_; }
  void set_pending_receive(const PendingReceive& p) override;
  void set_origin_changed_at(SnapshotId id) override;
  Status delete_snapshot(SnapshotId id) override;
  Result<std::optional<SnapshotInfo>> find_snapshot(SnapshotId id) override;
  Result<std::optional<SnapshotInfo>> find_snapshot(std::string_view name) override;
  Status list_snapshots(SnapshotId from, const std::function<bool(const SnapshotInfo&)>& fn) override;
  uint64_t snapshot_count() const override { return snapshot_count_; }
  Status commit() override;

 protected:
  explicit StoreBase(std::unique_ptr<TransactionManager> tm);
  // Creates the empty common trees in a fresh store.
  Status init_common();
  void load_common();

  // Gives a new snapshot of `parent` (null: of the origin) its store key;
  // may update the parent's record (which StoreBase then writes back).
  virtual Result<uint64_t> allocate_key(SnapshotRecord* parent) = 0;
  virtual Status on_created(const SnapshotInfo& info) = 0;
  virtual Status on_deleted(const SnapshotInfo& info) = 0;
  // Writes the format's roots and counters into the store area (its
  // kStoreAreaSpecificSize bytes from kStoreAreaSpecificOffset on).
  virtual void save_specific(uint8_t* area) = 0;

  // Runs the part of an update that changes metadata, after everything that
  // may fail cleanly (checks, space reservations, chunk allocations) has been
  // done. If it still fails (an I/O error, or a reservation that fell short)
  // the in-memory state may be half changed, so the transaction manager is
  // failed and none of it can be committed: the store reopens as it was.
  Status apply(const std::function<Status()>& change);
  // Reserves metadata blocks for `tree_ops` B-tree inserts or removes.
  Status reserve(uint64_t tree_ops);

  // diff() for a store whose exceptions are keyed (origin chunk, x): walks
  // them from `from`, and reports each chunk where the entry `covers`
  // says serves `a` is not the one serving `b`. covers(key, value) returns
  // {serves a, serves b}.
  template <class Tree, class Covers>
  static Status diff_entries(Tree& tree, uint64_t from, Covers covers, const std::function<bool(uint64_t)>& fn) {
    std::optional<uint64_t> chunk, in_a, in_b;
    bool stopped = false;
    auto close_chunk = [&] {
      if (chunk && in_a != in_b && !fn(*chunk)) stopped = true;
    };
    MS_TRY(tree.scan({from, 0}, [&](const PairKey& k, const typename Tree::Value& v) {
      if (k.hi != chunk) {
        close_chunk();
        if (stopped) return false;
        chunk = k.hi;
        in_a.reset();
        in_b.reset();
      }
      auto [a, b] = covers(k, v);
      if (a) in_a = k.lo;
      if (b) in_b = k.lo;
      return true;
    }));
    if (!stopped) close_chunk();
    return Status::ok();
  }

  void fill_common_stats(StoreStats& s);
  // Checks the snapshot and name trees; records their blocks in `meta_refs`.
  void check_common(CheckReport& report, const std::function<void(uint64_t)>& meta_ref,
                    const std::function<void(const SnapshotInfo&)>& on_snapshot);

  static SnapshotInfo to_info(uint64_t id, const SnapshotRecord& r);

  std::unique_ptr<TransactionManager> tm_;
  uint64_t snapshots_root_ = 0;
  uint64_t names_root_ = 0;
  uint32_t next_id_ = 1;
  uint32_t snapshot_count_ = 0;
  SnapshotId origin_changed_at_ = 0;
  PendingReceive receive_;
  uint64_t properties_root_ = 0;

 private:
  static uint64_t name_hash(std::string_view name);
};

}  // namespace multisnap
