// ExceptionStore: the generic engine's view of an exception store, the C++
// form of the seed's method table (dm_multisnap_exception_store). Two
// implementations: the range store (store/range) and the bitmask store
// (store/bitmask).
//
// Vocabulary: an origin chunk C of snapshot S is either still on the origin
// (kOrigin), or remapped to a store chunk (kStore), or known to be zeros
// (kZero). A mapping is *exclusive* when no other live snapshot shares it:
// only then may S's writes go to it in place.
//
// The engine drives the store like this (docs/design.md, "Request flow"):
//  * origin write to C: reset_query(C); while query_next_remap(): allocate a
//    copy slot and add_next_remap(). One copy job then reads C from the
//    origin and writes it to every chunk returned. The write is retried from
//    the start once the copies are committed.
//  * snapshot write to C: lookup(C, S, exclusive); if not exclusive,
//    make_chunk_writeable(C, S) gives a CopyPlan; after it is committed the
//    write is retried and finds an exclusive chunk.
//  * conflicts: every copy job carries the store's CopyDescriptor; the engine
//    asks conflicts(desc, S) and never looks inside.
//  * commit() makes everything so far durable (transaction.h).
//
// Metadata changes become visible to lookups at once and durable at the next
// commit. The engine must not let a client see a remap whose copy has not
// completed, nor overwrite the origin before the remap that preserves it is
// committed.
//
// Single-threaded: the engine thread (or an offline tool) owns the store.
#pragma once

#include <algorithm>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "meta/transaction.h"
#include "store/store_format.h"
#include "util/uuid.h"

namespace multisnap {

using SnapshotId = uint32_t;  // user-visible, never reused; 0 stands for the origin
constexpr SnapshotId kOriginId = 0;
constexpr size_t kMaxSnapshotName = 64;
constexpr uint64_t kNoChunk = UINT64_MAX;
// Property ids (persisted: never renumber; docs/format.md).
constexpr uint64_t kPolicyProperty = 1;    // the rolling-snapshot policy (JSON)
constexpr uint64_t kRollbackProperty = 2;  // a rollback in progress: u32 target, u64 next chunk
constexpr uint64_t kOriginProperty = 3;    // which file is the origin (JSON; daemon/origin_identity.h)

// SnapshotInfo::flags (persisted in the snapshot record: never renumber).
constexpr uint32_t kSnapshotWritten = 1;  // written to since it was created

struct SnapshotInfo {
  SnapshotId id = 0;
  SnapshotId parent = kOriginId;  // what it is a snapshot of
  std::string name;               // empty: no name
  uint64_t created_ns = 0;        // wall clock, ns since the epoch
  uint64_t store_key = 0;         // the store's own handle (range key ID, or bit)
  uint32_t children = 0;          // snapshots ever made of this one
  Uuid uuid;                      // random at create, or the sender's (receive); never changes
  uint32_t flags = 0;             // kSnapshot*
};

// A receive in progress (docs/replication.md): committed before the first
// origin write of the stream, cleared when its snapshot is created or the
// receive is aborted.
struct PendingReceive {
  Uuid target;                      // the snapshot it will create
  SnapshotId base = kOriginId;      // kOriginId: a full stream
  SnapshotId origin_changed_before = 0;  // to restore on abort
  bool active() const { return !target.is_nil(); }
};

struct ChunkMapping {
  enum class Kind { kOrigin, kStore, kZero };
  Kind kind = Kind::kOrigin;
  uint64_t store_chunk = 0;  // kStore
  bool exclusive = false;    // only computed when asked for
};

// Opaque to the engine: the range store puts a key range in it, the bitmask
// store a mask.
struct CopyDescriptor {
  uint64_t a = 0;
  uint64_t b = 0;
};

// A copy the engine must perform before the metadata that produced it may
// be committed: read `source` once, write it to every chunk in `dests`.
struct CopyPlan {
  enum class Source { kOrigin, kStore, kZero };
  Source source = Source::kOrigin;
  uint64_t source_chunk = 0;  // kStore
  std::vector<uint64_t> dests;
  CopyDescriptor descriptor;
};

struct StoreStats {
  const char* format = "";
  uint32_t chunk_size = 0;
  uint64_t origin_size = 0;
  // One space (format 3): metadata borrows whole data chunks when its pool
  // is full. data_chunks_used counts chunks holding data only;
  // meta_chunks_borrowed the chunks holding metadata; meta_blocks_total is
  // the pool and meta_blocks_used every metadata block in use (pool and
  // borrowed chunks).
  uint64_t data_chunks_total = 0;
  uint64_t data_chunks_used = 0;
  uint64_t meta_blocks_total = 0;
  uint64_t meta_blocks_used = 0;
  uint64_t meta_chunks_borrowed = 0;
  uint64_t meta_blocks_borrowed_free = 0;  // free blocks inside borrowed chunks
  bool shared_space = false;               // format 3: metadata may borrow data chunks
  // The store's size now and the most `grow` can take it to (format 4;
  // equal for older formats, which cannot grow).
  uint64_t store_bytes = 0;
  uint64_t max_store_bytes = 0;
  bool growable = false;  // format 4
  // Free bytes: data chunks free + metadata pool free + free blocks in
  // borrowed chunks (what data and metadata together can still use).
  uint64_t free_data_bytes() const { return (data_chunks_total - data_chunks_used - meta_chunks_borrowed) * chunk_size; }
  uint64_t free_bytes() const { return free_data_bytes() + free_meta_bytes(); }
  // `status` warns when free data space (which copies need, and metadata
  // borrows from past its pool) is below this: 5% of the data area, at most
  // 1 GiB; a format-2 store also when its fixed metadata area is 95% full.
  uint64_t low_space_threshold() const {
    return std::min<uint64_t>(data_chunks_total * chunk_size / 20, 1ull << 30);
  }
  bool low_on_space() const {
    return free_data_bytes() < low_space_threshold() ||
           (!shared_space && free_meta_bytes() < meta_blocks_total * 4096 / 20);
  }
  uint64_t free_meta_bytes() const {
    uint64_t pool_used = meta_blocks_used - (meta_chunks_borrowed * (chunk_size / 4096) - meta_blocks_borrowed_free);
    return (meta_blocks_total - pool_used + meta_blocks_borrowed_free) * 4096;
  }
  uint64_t snapshots = 0;
  uint64_t snapshot_slots_free = UINT64_MAX;  // bitmask store: free bits
  uint64_t exceptions = 0;
  uint64_t generation = 0;
  bool reclaim_active = false;
  double reclaim_progress = 1.0;  // fraction of the current pass done
};

// One mapping, as `multisnap dump` prints it.
struct DumpEntry {
  uint64_t chunk = 0;
  std::string snapshots;  // "3..7" (range store) or "0x..." mask (bitmask store)
  std::vector<SnapshotId> live;  // the live snapshots it serves
  bool zero = false;
  uint64_t store_chunk = 0;
};

// Problems found by check(); it keeps going after each one.
class CheckReport {
 public:
  void problem(std::string text) { problems_.push_back(std::move(text)); }
  void note(std::string text) { notes_.push_back(std::move(text)); }
  // Damage that lost nothing (a commit record copy whose twin is intact).
  void warning(std::string text) { warnings_.push_back(std::move(text)); }
  bool clean() const { return problems_.empty(); }
  const std::vector<std::string>& problems() const { return problems_; }
  const std::vector<std::string>& warnings() const { return warnings_; }
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  std::vector<std::string> problems_;
  std::vector<std::string> warnings_;
  std::vector<std::string> notes_;
};

// Space use of one live snapshot (`snapshot list --space`), in store chunks.
// Zero mappings use no space and count for nothing.
struct SnapshotSpace {
  SnapshotId id = 0;
  // Chunks no other live snapshot reads: what deleting this snapshot alone
  // frees once reclaim has run (ZFS's `used`).
  uint64_t exclusive_chunks = 0;
  // Chunks it reads that at least one other live snapshot reads too.
  uint64_t shared_chunks = 0;
};

// A pass over every exception that tallies SnapshotSpace for each live
// snapshot, in bounded steps (ExceptionStore::start_space_scan). Memory: a
// few words per live snapshot, never per exception.
//
// The live snapshots are those when the scan started; each step resumes
// after the last exception it visited in the *current* tree. So a scan whose
// steps are interleaved with changes counts each exception as it was when
// its step visited it; it is exact when nothing changed in between.
// snapshots_changed() says when the set of live snapshots moved under it
// (the figures are then not meaningful: start again).
class SpaceScan {
 public:
  virtual ~SpaceScan() = default;
  // Visits about `budget` more exceptions; true once every one was visited.
  virtual Result<bool> step(uint32_t budget) = 0;
  // True when a snapshot was created or deleted since the scan started.
  bool snapshots_changed() const;
  // One entry per live snapshot of the start, in ID order.
  virtual std::vector<SnapshotSpace> result() const = 0;
  // Chunks that no live snapshot reads: a reclaim pass will free them.
  uint64_t unreferenced_chunks() const { return unreferenced_; }
  uint64_t visited() const { return visited_; }
  // The exception count when the scan started (progress: visited / total).
  uint64_t total() const { return total_; }

 protected:
  explicit SpaceScan(const class ExceptionStore& store);
  const class ExceptionStore& store_;
  SnapshotId last_id_at_start_ = 0;  // a create moves it, a delete moves the count
  uint64_t count_at_start_ = 0;
  uint64_t unreferenced_ = 0;
  uint64_t visited_ = 0;
  uint64_t total_ = 0;
};

class ExceptionStore {
 public:
  virtual ~ExceptionStore() = default;

  // The transaction manager underneath: for the store's own code, offline
  // tools and tests. The engine uses the calls below instead.
  virtual TransactionManager& tm() = 0;
  const Layout& layout() { return tm().layout(); }

  // ---- state of the store as a whole
  // Ok, or why the store failed: a commit that failed, an update that failed
  // half-way, or fail(). A failed store takes no more changes (commit()
  // refuses) until it is reopened, which returns it to its last commit.
  // This is the one "store failed" state; the engine keeps only a mirror.
  const Status& failure() { return tm().status(); }
  // Fails the store, e.g. when the copy that a remap points at failed:
  // that remap must never be committed. Returns the (first) failure.
  Status fail(Status why) { return tm().fail(std::move(why)); }
  // Metadata changed since the last commit.
  bool has_changes() { return tm().has_changes(); }
  CacheStats cache_stats() { return tm().cache().stats(); }
  // The store's identity and the origin it was created for (superblock).
  Uuid uuid() { return Uuid{tm().superblock().uuid}; }
  const std::string& origin_path() { return tm().superblock().origin_path; }
  // Damage in the copies of the newest commit record, found at open
  // (docs/format.md, section 4), and rewriting the damaged copies.
  const std::vector<CommitRecordFinding>& commit_findings() { return tm().commit_findings(); }
  Result<int> repair_commit_copies() { return tm().repair_commit_copies(); }
  // Format 4: the data area grows to `chunks`, the store to `store_bytes`,
  // at the next commit (TransactionManager::grow).
  Status grow(uint64_t chunks, uint64_t store_bytes) { return tm().grow(chunks, store_bytes); }

  // ---- snapshots
  // O(1) in the number of chunks and snapshots (a few B-tree operations).
  // `uuid`: the new snapshot's identity (receive gives the sender's);
  // random when absent.
  virtual Result<SnapshotInfo> create_snapshot(std::optional<SnapshotId> parent, std::string name,
                                               uint64_t now_ns, std::optional<Uuid> uuid = std::nullopt) = 0;
  // The ID disappears at once; its space is reclaimed by reclaim_step().
  virtual Status delete_snapshot(SnapshotId id) = 0;
  virtual Result<std::optional<SnapshotInfo>> find_snapshot(SnapshotId id) = 0;
  virtual Result<std::optional<SnapshotInfo>> find_snapshot(std::string_view name) = 0;
  // Calls fn for each live snapshot with id >= from, in ID order, until it returns false.
  virtual Status list_snapshots(SnapshotId from, const std::function<bool(const SnapshotInfo&)>& fn) = 0;
  virtual uint64_t snapshot_count() const = 0;
  // The highest ID ever given (0: none yet).
  virtual SnapshotId last_snapshot_id() const = 0;
  // The live snapshot with the highest ID (the "newest"), if any.
  virtual Result<std::optional<SnapshotInfo>> newest_snapshot() = 0;
  // Marks a snapshot written since its creation (kSnapshotWritten); false if
  // it already was. A metadata change: commit before the write is let in.
  virtual Result<bool> mark_written(SnapshotId id) = 0;

  // ---- origin changes, for replication: the highest snapshot ID that
  // existed when the origin last changed. The origin has not changed since
  // snapshot B was created iff origin_changed_at() < B.
  virtual SnapshotId origin_changed_at() const = 0;
  // Records an origin change now, if not already recorded for the newest ID;
  // true when that changed metadata (which must commit before the write).
  virtual bool record_origin_change() = 0;
  // True when the committed state lags the recorded origin change.
  virtual bool origin_change_uncommitted() const = 0;

  // ---- properties: small settings kept in the store (the PROP tree), at
  // most 254 bytes each, e.g. the rolling-snapshot policy. Ids are
  // persisted: never renumber (store/properties.h lists them).
  virtual Result<std::optional<std::string>> get_property(uint64_t id) = 0;
  // nullopt removes it. A metadata change: durable at the next commit.
  virtual Status set_property(uint64_t id, const std::optional<std::string>& value) = 0;

  // ---- a receive in progress (persisted in the store area)
  virtual const PendingReceive& pending_receive() const = 0;
  virtual void set_pending_receive(const PendingReceive& p) = 0;
  // Restores origin_changed_at (receive --abort).
  virtual void set_origin_changed_at(SnapshotId id) = 0;

  // ---- reads
  virtual Result<ChunkMapping> lookup(uint64_t chunk, const SnapshotInfo& snap, bool want_exclusive) = 0;

  // ---- replication: what differs between two volumes, from metadata alone
  // Calls fn(chunk) for each chunk >= from, in increasing order, that `a`
  // and `b` (null: the origin) are not served from the same place, until fn
  // returns false. Visits the exceptions from `from` on; reads no data.
  // A chunk nobody wrote since the older of the two was created is never
  // reported; every chunk where they differ is.
  virtual Status diff(const SnapshotInfo& a, const SnapshotInfo* b, uint64_t from,
                      const std::function<bool(uint64_t chunk)>& fn) = 0;

  // ---- origin writes (the seed's query/add loop)
  virtual void reset_query(uint64_t chunk) = 0;
  virtual Result<bool> query_next_remap() = 0;
  // Allocates a store chunk for the set found by query_next_remap() and
  // records the remap; returns the chunk and fills the descriptor. With
  // `zero` (the origin chunk is known to read as zeros) it records a zero
  // mapping instead: no chunk, nothing to copy; returns kNoChunk.
  virtual Result<uint64_t> add_next_remap(CopyDescriptor* descriptor, bool zero = false) = 0;

  // ---- snapshot writes
  // For a mapping that is not exclusive (or a zero mapping about to be
  // partly written): records S's own chunk and says how to fill it.
  virtual Result<CopyPlan> make_chunk_writeable(uint64_t chunk, const SnapshotInfo& snap) = 0;
  // Makes the whole chunk read as zeros for S, freeing S's own copy. The
  // plan may need a copy to keep sharers intact (dests), or none; either way
  // its descriptor covers every snapshot whose mapping or sharing changed,
  // which must not write in place before the change is committed.
  virtual Result<CopyPlan> zero_chunk(uint64_t chunk, const SnapshotInfo& snap) = 0;

  // ---- conflicts
  virtual bool conflicts(const CopyDescriptor& d, const SnapshotInfo& snap) const = 0;

  // ---- background reclaim of deleted snapshots
  virtual bool reclaim_pending() const = 0;
  // Does a bounded amount of work (about `budget` entries); the caller commits.
  virtual Status reclaim_step(uint32_t budget) = 0;

  // ---- space use per snapshot: one pass over the exceptions, in steps
  // (SpaceScan). The scan refers to this store: use it only while the store
  // lives, on the thread that owns the store.
  virtual Result<std::unique_ptr<SpaceScan>> start_space_scan() = 0;
  // The whole pass at once (tests and offline tools): one entry per live
  // snapshot, in ID order.
  Result<std::vector<SnapshotSpace>> space_use();

  // ---- commit and introspection
  virtual Status commit() = 0;
  virtual StoreStats stats() = 0;
  virtual Status dump(const std::function<bool(const DumpEntry&)>& fn) = 0;
  // Walks all committed metadata (open the store read-only for this).
  virtual void check(CheckReport& report) = 0;
};

struct CreateOptions {
  StoreFormat format = StoreFormat::kRange;
  uint32_t chunk_size = 64 * 1024;
  uint64_t origin_size = 0;
  std::string origin_path;
  std::optional<uint64_t> metadata_size;
  // The most `grow` may take the store to (LayoutRequest::max_store_size).
  std::optional<uint64_t> max_store_size;
  // The on-disk format version to write: kFormatVersion, or 2 or 3 (as
  // earlier multisnap made) for compatibility tests.
  uint32_t format_version = kFormatVersion;
};

struct GrowResult {
  uint64_t old_bytes = 0, new_bytes = 0;    // the store's size before and after
  uint64_t old_chunks = 0, new_chunks = 0;  // data chunks before and after
  uint64_t max_bytes = 0;                   // the most it can grow to (room made at create)
  uint64_t added_bytes = 0;                 // new chunks x chunk size (data and metadata can use them)
};
// Grows `store` (format 4) to `store_bytes` of its device `dev`, or with 0
// to the size the device has now: checks the size against the room made at
// create, makes the device that big (durably: BlockDevice::resize), and
// grows the data area in the open transaction. The caller commits; until
// then a crash leaves the old size.
Result<GrowResult> grow_store(ExceptionStore& store, BlockDevice& dev, uint64_t store_bytes);

// Writes a new, empty store on `dev` (its whole size).
Status format_store(BlockDevice& dev, const CreateOptions& options);
// Opens the store of whichever format the superblock names.
Result<std::unique_ptr<ExceptionStore>> open_store(BlockDevice& dev, const TmOptions& options);

// Validates a snapshot name: 1..64 bytes of [A-Za-z0-9._:@+-], not all digits.
Status validate_snapshot_name(std::string_view name);

}  // namespace multisnap
