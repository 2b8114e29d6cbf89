// Engine: one origin volume plus one exception store, serving reads and
// writes of the origin and of every snapshot, with copy-on-write, conflict
// tracking between in-flight copies and client I/O, and group commit.
//
// docs/design.md ("Request flow") describes what happens to each request.
// In short:
//  * origin reads go straight to the origin, on the caller's thread, and so
//    do origin writes to chunks already known to need no copy (clean_map.h);
//  * everything else is queued to the engine thread, which asks the store
//    what must be preserved or split, runs copy jobs (at most copy_slots
//    chunks in flight, async I/O), commits their metadata in groups, and
//    retries the waiting request from the start once they are committed;
//  * the origin is never written before the metadata preserving its old
//    contents is durable; a FLUSH makes every acknowledged write durable.
//
// Threading: all public methods are thread-safe. Completion callbacks run on
// the engine thread (or, for origin reads, on the caller's), must not block
// and must not call back into the engine synchronously... except submit(),
// which is allowed. With EngineOptions::threaded false there is no engine
// thread: the caller drives the engine with poll()/run_until_idle() (tests
// use this for determinism), and blocking calls drive it themselves.
//
// Ownership: the caller owns both devices and keeps them alive until the
// Engine is destroyed. Destroying the Engine drains, commits and stops it.
// A Volume may outlive its Engine (it is then useless, but harmless).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "io/io_context.h"
#include "store/exception_store.h"
#include "util/histogram.h"

namespace multisnap {

struct EngineOptions {
  size_t cache_bytes = 64ull << 20;
  // Chunks being copied at once. 0: automatic, 16 MiB of chunk buffers,
  // at least 8 slots and at most 64 or 4 MiB of chunks, whichever is more
  // (64 with 64 KiB chunks, 1024 with 4 KiB chunks: a commit group holds at
  // least 4 MiB of copies). More slots put more copies in each group
  // commit: sequential writes after a snapshot ran 1.6-3x faster with 64
  // than with 8 (bench/copy_slots.sh; docs/design.md, section 3).
  uint32_t copy_slots = 8;
  // Copies from the origin are written to the store straight from the
  // origin's page-cache pages (a read-only mapping) when they are in
  // memory: no read, no copy into a slot buffer (docs/design.md, 3).
  bool map_origin = true;
  // Origin writes the engine thread makes (those that cannot take the
  // caller's-thread shortcut: after the copies they wait for, or the first
  // to a chunk since a start or a snapshot) of at most this many bytes,
  // whole pages, without FUA, are made right there with a plain buffered
  // write instead of through the I/O context: a 4 KiB write into the page
  // cache takes microseconds, while io_uring hands a buffered write to ext4
  // to a worker thread (ext4 takes no non-blocking buffered write), which
  // took about 550 us per write here. 4 KiB first writes after a snapshot:
  // 8,719-8,861 against 7,179-7,249 IOPS. The price: where the kernel
  // throttles a writer (too many dirty pages), the engine thread waits, not
  // a worker (I/O queued before the write is handed to the kernel first:
  // IoContext::kick). Partial pages go through the I/O context: on an
  // uncached page they would read it first. 0: every origin write through
  // the I/O context (docs/design.md, 4).
  uint32_t inline_origin_write_max = 64u << 10;
  bool threaded = true;
  uint32_t reclaim_budget = 2048;  // exceptions visited per background step
  bool read_only_snapshots = false;
  uint32_t commit_interval_ms = 1000;  // longest a metadata change waits for a commit
  // Origin writes to chunks known to need no copy go straight to the origin
  // from the caller's thread; this bounds the memory that knowledge takes
  // (one bit per chunk, in 4 KiB pages). 0 disables the shortcut.
  size_t clean_map_bytes = 8u << 20;
  // Snapshot reads of chunks already in the store are served on the
  // caller's thread once the engine has seen where they are (read_map.h);
  // this bounds how many such locations are remembered (about 48 bytes
  // each). 0 sends every snapshot read through the engine thread.
  size_t read_map_entries = 1u << 20;
  // Open the older commit if both copies of a possibly newer one are damaged.
  bool use_older_commit = false;
  // A full store. Unset: a write that needs a store chunk (or metadata) the
  // store does not have fails with kNoSpace at once. Set: when no background
  // reclaim is under way that could free some, the engine calls it (on the
  // engine thread; it must not block nor call into the engine) and it
  // returns true when its owner will free space, e.g. by deleting a
  // snapshot from another thread. The write then waits (a reclaim under way
  // counts too) and is retried after every commit and at least every 200 ms;
  // it fails with kNoSpace once the hook returns false, or after waiting
  // no_space_wait_ms in all, or when the engine shuts down.
  std::function<bool()> on_no_space;
  uint32_t no_space_wait_ms = 30000;
  // A space pass (Engine::space_use) visits this many exceptions per turn
  // of the engine thread, so requests are served between its pages.
  uint32_t space_page = 4096;
};

// An open volume: the origin or one snapshot. Obtained from open_volume();
// while any Volume of a snapshot exists, deleting it is refused (kBusy).
class Volume {
 public:
  ~Volume();
  bool is_origin() const { return !snapshot_.has_value(); }
  const std::optional<SnapshotInfo>& snapshot() const { return snapshot_; }
  // "origin" or "snapshot/<id>".
  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  bool read_only() const { return read_only_; }

 private:
  friend class Engine;
  friend class EngineCore;
  Volume() = default;
  // Shared with the engine, so a Volume may outlive it harmlessly.
  std::shared_ptr<struct VolumeRegistry> registry_;
  std::optional<SnapshotInfo> snapshot_;
  std::string name_;
  uint64_t size_ = 0;
  bool read_only_ = false;
};
using VolumeRef = std::shared_ptr<Volume>;

struct IoRequest {
  enum class Op { kRead, kWrite, kFlush, kTrim, kWriteZeroes, kCache };
  Op op = Op::kRead;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t* buf = nullptr;  // kRead: destination; kWrite: source (must live until done)
  bool fua = false;        // durable when done
};
using IoDone = std::function<void(Status)>;

struct AllocationExtent {
  uint64_t length = 0;
  bool hole = false;  // not allocated (for a snapshot: zeroed by a trim or never written origin)
  bool zero = false;  // reads as zeros
};
using ExtentsDone = std::function<void(Result<std::vector<AllocationExtent>>)>;

struct EngineCounters {
  uint64_t reads = 0, writes = 0, flushes = 0, trims = 0, zeroes = 0;
  uint64_t bytes_read = 0, bytes_written = 0;
  uint64_t copy_jobs = 0, chunks_copied = 0, commits = 0;
  uint64_t copy_runs = 0;  // runs of origin copies: adjacent chunks copied together (core.h, CopyRun)
  uint64_t copy_runs_mapped = 0;  // of them written from the origin's mapping, with no read (the rest: one read each)
  uint64_t retries = 0;  // requests retried after waiting
  uint64_t errors = 0;
  uint64_t direct_writes = 0;  // origin writes that took the shortcut
  uint64_t direct_reads = 0;   // snapshot reads served on the caller's thread (read_map.h)
  uint64_t origin_writes_inline = 0;  // origin writes the engine thread made itself (inline_origin_write_max)
  HistogramSnapshot copy_latency;    // copy jobs that copied data: start to data written
  HistogramSnapshot commit_latency;  // store commits
};

struct RollbackStatus {
  bool active = false;
  SnapshotId target = 0;
  uint64_t done_chunks = 0, total_chunks = 0;
  std::string error;  // why it stopped (it resumes at the next open)
};

// The space passes running now (Engine::space_use), for `status`.
struct SpaceScanStatus {
  bool active = false;
  uint64_t done = 0, total = 0;  // exceptions visited, of about this many (the newest pass)
};

// What Engine::space_use found, in store chunks.
struct SpaceUse {
  std::vector<SnapshotSpace> snapshots;  // every live snapshot, in ID order
  uint64_t unreferenced_chunks = 0;      // read by no live snapshot: reclaim will free them
  uint64_t exceptions = 0;               // visited
  uint32_t restarts = 0;                 // passes started again because snapshots came or went
};

struct EngineStatus {
  StoreStats store;
  EngineCounters counters;
  uint64_t open_volumes = 0;
  uint64_t requests_in_flight = 0;
  uint64_t cache_hits = 0, cache_misses = 0, cache_blocks = 0, cache_capacity_blocks = 0;
  std::string failure;  // empty unless the store has failed
  RollbackStatus rollback;
  SpaceScanStatus space_scan;
};

class Engine {
 public:
  // The engine does its asynchronous I/O through make_default_io_context().
  static Result<std::unique_ptr<Engine>> open(BlockDevice& origin, BlockDevice& store,
                                              const EngineOptions& options);
  // ... or through `io`, which the engine owns from then on (tests pass a
  // synchronous or a reordering one, as leveldb's tests pass an Env).
  static Result<std::unique_ptr<Engine>> open(BlockDevice& origin, BlockDevice& store, const EngineOptions& options,
                                              std::unique_ptr<IoContext> io);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // "origin" (or ""), "snapshot/<id>", "snapshot/<name>". kNotFound if none.
  Result<VolumeRef> open_volume(std::string_view name);

  // Validates and queues a request; `done` runs exactly once.
  void submit(const VolumeRef& volume, const IoRequest& request, IoDone done);
  void block_status(const VolumeRef& volume, uint64_t offset, uint64_t length, ExtentsDone done);

  // Durable when they return. create: O(1); writes acknowledged before the
  // call are in the snapshot. delete: kBusy while the snapshot has open
  // volumes; its space is reclaimed in the background afterwards.
  Result<SnapshotInfo> create_snapshot(std::optional<SnapshotId> of, std::string name,
                                       std::optional<Uuid> uuid = std::nullopt);
  Status delete_snapshot(SnapshotId id);
  // All of them in one commit, or none: kBusy if any has open volumes,
  // kNotFound if any does not exist, kInvalidArgument for a repeated ID.
  Status delete_snapshots(const std::vector<SnapshotId>& ids);
  // "<id>" or "<name>".
  Result<std::optional<SnapshotInfo>> find_snapshot(std::string_view id_or_name);
  // Snapshots with id >= from, at most `limit`, in ID order.
  Result<std::vector<SnapshotInfo>> list_snapshots(SnapshotId from = 0, size_t limit = SIZE_MAX);
  EngineStatus status();

  // ---- rollback (docs/lifecycle.md): the origin becomes what snapshot
  // `target` holds, every snapshot reads as before. Refused (kBusy) while
  // the origin is open; while it runs the origin cannot be opened, the
  // target is read-only and no snapshot of the origin can be taken. It is
  // committed in steps and resumes by itself when the store is opened again
  // after a crash. wait_rollback() returns when it is done and durable.
  Status start_rollback(SnapshotId target);
  RollbackStatus rollback_status();
  Status wait_rollback();

  // ---- space use per snapshot (`snapshot list --space`): one pass over
  // every exception, on the engine thread in pages of
  // EngineOptions::space_page exceptions, so I/O goes on between pages.
  // Memory: O(live snapshots), never O(exceptions). Exact when nothing is
  // written meanwhile; a write between two pages is counted as the page
  // that visits its chunk finds it. A snapshot created or deleted during
  // the pass starts it again; after 3 such restarts the pass runs in one
  // turn (holding the engine thread for its whole length).
  // `progress(done, total)` runs on the caller's thread after each page.
  Result<SpaceUse> space_use(const std::function<void(uint64_t done, uint64_t total)>& progress = {});

  // ---- growing the store (format 4; docs/format.md, section 1)
  // Makes the store device `store_bytes` big (a regular file is extended,
  // sparse; a block device must already be that big) or, with 0, takes the
  // size the device has now, and adds the new chunks to the data space in
  // one commit: durable when this returns, and a crash before that leaves
  // the old size. Writes pause for one commit at most (the engine quiesces,
  // as for a snapshot create); the new space is used at once.
  Result<GrowResult> grow(uint64_t store_bytes);

  // ---- properties kept in the store (ExceptionStore::get_property); set
  // is durable when it returns.
  Result<std::optional<std::string>> property(uint64_t id);
  Status set_property(uint64_t id, const std::optional<std::string>& value);

  // ---- replication (docs/replication.md)
  // Chunks in [first, last] where snapshot `a` and `b` (nullopt: the origin)
  // differ, from metadata alone; at most `max` of them, in order.
  Result<std::vector<uint64_t>> changed_chunks(SnapshotId a, std::optional<SnapshotId> b, uint64_t first,
                                               uint64_t last, size_t max);
  struct ReplicaState {
    std::optional<SnapshotInfo> newest;  // the live snapshot with the highest ID
    SnapshotId origin_changed_at = 0;    // see ExceptionStore::origin_changed_at
    PendingReceive pending;
    uint64_t snapshots = 0;
    Uuid store_uuid;
    std::optional<SnapshotInfo> with_uuid;  // the snapshot carrying the uuid asked about, if any
  };
  // `uuid`: also look for a snapshot with this uuid (a scan of the table).
  Result<ReplicaState> replica_state(const Uuid* uuid = nullptr);
  // Records a receive as pending, durably, before its first origin write.
  Status begin_receive(const PendingReceive& pending);
  // Makes every origin write durable, then creates the received snapshot
  // and clears the pending receive in one commit.
  Result<SnapshotInfo> finish_receive(const std::string& name, const Uuid& uuid);
  // Clears the pending receive (abort: also restores origin_changed_at).
  Status end_receive(bool restore_origin_state);

  // Commits and flushes both devices (what SIGTERM does before exiting).
  Status sync();

  // Without an engine thread: one pass of the loop (does not block), and a
  // loop until nothing is queued, waiting or in flight.
  void poll();
  void run_until_idle();

  const Layout& layout() const;

 private:
  explicit Engine(std::unique_ptr<class EngineCore> core);
  // create_snapshot, with `also` changing the store in the same commit.
  Result<SnapshotInfo> create_snapshot_with(std::optional<SnapshotId> of, std::string name,
                                            std::optional<Uuid> uuid,
                                            const std::function<void(ExceptionStore&)>& also);
  std::unique_ptr<class EngineCore> core_;
};

}  // namespace multisnap
