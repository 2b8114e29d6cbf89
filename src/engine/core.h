// EngineCore: the engine's state and its single-threaded loop. Internal to
// the engine layer; engine.h is the public face.
//
// Invariants (check_invariants() asserts them in debug builds):
//  E1. A request waits in exactly one place: the run queue, a chunk's
//      waiters, job_waiters_, commit_waiters_, quiesce_waiters_ or
//      space_waiters_; or it has data I/O in flight.
//  E2. The origin is written only for a request that found every chunk it
//      touches free of pending jobs and of in-flight snapshot reads from the
//      origin, and for which the store had nothing (more) to preserve.
//  E3. A job's metadata is committed only after its copies completed: a
//      commit happens only when no job is in flight.
//  E4. slots_used_ <= max(copy_slots, 2): copy I/O in flight is bounded (a
//      split needing two chunks may run alone when copy_slots is 1). Each
//      job with data to read holds one chunk buffer of the slot arena; a
//      run's jobs hold adjacent buffers (buffers in use <= jobs <= slots).
//  E5. A chunk's ChunkState exists only while it has jobs, origin readers,
//      store I/O or waiters.
//  E6. A store chunk a snapshot is reading or writing is not freed (a whole
//      chunk zeroed waits for that I/O), so it cannot be reused under it.
//  E7. A read-map entry (S, C) -> X exists only while S's committed-or-
//      copied mapping of C is X: make_chunk_writeable and zero_chunk of C
//      (for any snapshot) come after forget_chunk(C), which waits for the
//      caller-thread reads that may have found it (read_map.h).
//  E8. Jobs copying from the origin are registered (on their chunk, in
//      jobs_in_flight_ and slots_used_) when started, and their I/O is
//      issued, grouped into runs, by submit_copies() before the loop goes on
//      to commit or to wait: no job is left unissued at the end of a step.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <list>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "engine/clean_map.h"
#include "engine/counters.h"
#include "engine/read_map.h"
#include "engine/engine.h"
#include "io/io_context.h"
#include "util/thread_annotations.h"

namespace multisnap {

// One copy: read `source` once, write it to every destination; or, with no
// destinations, a metadata-only change (a zeroed chunk) that still has to be
// committed before the chunk's waiters may go on.
struct CopyRun;
struct CopyJob {
  uint64_t chunk = 0;  // origin chunk it is about
  CopyPlan::Source source = CopyPlan::Source::kOrigin;
  uint64_t source_chunk = 0;
  std::vector<uint64_t> dests;
  std::vector<CopyDescriptor> descriptors;  // conflicts: any of them
  uint8_t* buffer = nullptr;
  IoOp read_op;
  std::vector<IoOp> write_ops;
  uint32_t pending = 0;
  Status status;
  bool poisoned = false;  // its copy failed: never committed, conflicting I/O fails
  CopyRun* run = nullptr;  // the run doing its I/O (origin copies), which owns the buffer
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};

// The I/O of copy jobs of consecutive origin chunks (jobs[i] copies chunk
// first_chunk + i): one read of the whole run into adjacent slot buffers
// (none when its origin pages are in memory: the writes take them from the
// origin's mapping, start_run), then one write per stretch of destinations
// that are consecutive in the store (one write for the run when the
// allocator gave consecutive chunks).
struct CopyRun {
  uint64_t first_chunk = 0;
  std::vector<CopyJob*> jobs;
  uint32_t first_slot = 0;  // buffers: slots [first_slot, first_slot + jobs.size())
  IoOp read_op;
  std::deque<IoOp> write_ops;  // deque: stable addresses
  uint32_t pending = 0;
  Status status;
};

// A client request inside the engine.
struct Request {
  VolumeRef volume;
  IoRequest io;
  IoDone done;
  ExtentsDone extents_done;  // block status requests only
  std::deque<IoOp> ops;      // data I/O (deque: stable addresses)
  uint32_t pending = 0;
  Status status;
  std::vector<uint64_t> origin_read_chunks;  // registered as origin readers
  std::vector<uint64_t> store_io_chunks;     // registered as store I/O
  bool is_write = false;                     // counts toward quiesce
  bool retried = false;
  std::chrono::steady_clock::time_point space_wait_since{};  // first parked for space (on_no_space)
};

struct ChunkState {
  std::vector<CopyJob*> jobs;
  uint32_t origin_readers = 0;  // snapshot reads from the origin in flight
  uint32_t store_io = 0;        // snapshot reads and writes of store chunks in flight
  std::vector<Request*> waiters;
};

// Which volumes are open; outlives the engine if a Volume does. Any thread
// (a Volume is closed on whichever thread drops its last reference).
struct VolumeRegistry {
  Mutex mu;
  std::unordered_map<SnapshotId, uint64_t> open_snapshots GUARDED_BY(mu);  // id -> open volumes
  uint64_t open_volumes GUARDED_BY(mu) = 0;
  uint64_t open_origins GUARDED_BY(mu) = 0;
  void closed(const Volume& v) EXCLUDES(mu);
  uint64_t open_count(SnapshotId id) EXCLUDES(mu);
};

// A rollback in progress (rollback.cc; engine thread only): the origin is rewritten with the
// target's data, chunk by chunk, where they differ (from metadata), in
// batches; after each batch the origin is flushed and the position
// committed (store property kRollbackProperty), so it resumes after a crash.
struct Rollback {
  SnapshotId target = 0;
  uint64_t next_chunk = 0;   // committed position: chunks below are done
  uint64_t batch_end = 0;    // position once the batch in flight is done
  uint64_t done_chunks = 0, total_chunks = 0;
  uint32_t in_flight = 0;
  VolumeRef snap, origin;    // internal: they keep the target from being deleted
  Status error;
};

// Progress of the space passes running (space.cc), read by status from any
// thread.
class SpaceScanTracker {
 public:
  void begin() {
    std::lock_guard lock(mu_);
    ++running_;
    status_ = {true, 0, 0};
  }
  void update(uint64_t done, uint64_t total) {
    std::lock_guard lock(mu_);
    status_.done = done;
    status_.total = total;
  }
  void end() {
    std::lock_guard lock(mu_);
    if (--running_ == 0) status_ = {};
  }
  SpaceScanStatus status() {
    std::lock_guard lock(mu_);
    return status_;
  }

 private:
  std::mutex mu_;
  uint32_t running_ = 0;
  SpaceScanStatus status_;
};

// A control operation: queued by any thread (under in_mu_), run on the
// engine thread; its caller waits for `done`.
struct ControlOp {
  bool needs_quiesce = false;
  std::function<void()> run;
  // Set for an operation whose changes a commit makes durable before it
  // returns (a snapshot delete): the loop runs every such operation queued
  // in a row, commits once, and gives each the commit's status. N deletes
  // from N clients at once cost one commit, not N.
  std::function<void(Status)> committed;
  bool done = false;  // guarded by EngineCore::control_mu_ (not expressible as GUARDED_BY here)
};

class EngineCore {
 public:
  EngineCore(BlockDevice& origin, BlockDevice& store_dev, std::unique_ptr<ExceptionStore> store,
             std::unique_ptr<IoContext> io, const EngineOptions& options);
  ~EngineCore();

  void start_thread();
  void shutdown();

  // Thread-safe.
  void submit(const VolumeRef& volume, const IoRequest& io, IoDone done);
  void block_status(const VolumeRef& volume, uint64_t offset, uint64_t length, ExtentsDone done);
  // Runs fn on the engine thread (after quiescing writes if asked) and
  // returns when it has run.
  void run_control(bool needs_quiesce, std::function<void()> fn);
  // The same for an operation that ends in a commit (ControlOp::committed):
  // quiesced; `fn` changes the store without committing; `committed` gets
  // the status of the commit that covered it (possibly shared with others).
  void run_control_committed(std::function<void()> fn, std::function<void(Status)> committed);
  Result<VolumeRef> open_volume(std::string_view name);
  uint64_t open_count(SnapshotId id) { return volumes_->open_count(id); }
  uint64_t open_volumes();
  uint64_t open_origins() {
    MutexLock lock(volumes_->mu);
    return volumes_->open_origins;
  }

  // rollback.cc. Starts one (a control op on the engine thread, store ok,
  // target found); the loop carries it out.
  Status start_rollback(const SnapshotInfo& target, uint64_t next_chunk);
  RollbackStatus rollback_status();
  Status wait_rollback();
  SnapshotId rolling_back_to() const { return rollback_target_.load(); }

  void poll() { step(false); }
  void run_until_idle();
  bool idle();

  ExceptionStore& store() { return *store_; }
  // The store's failure (ExceptionStore::failure()); engine thread only.
  // Refreshes the store_failed_ mirror.
  const Status& store_failure() {
    const Status& failure = store_->failure();
    if (!failure.is_ok()) store_failed_.store(true, std::memory_order_relaxed);
    return failure;
  }
  BlockDevice& origin() { return origin_; }
  BlockDevice& store_device() { return store_dev_; }
  const EngineOptions& options() const { return options_; }
  EngineCounters counters() { return counters_.snapshot(); }
  uint64_t requests_in_flight() const { return outstanding_.load(); }
  Status commit_now();  // engine thread only; no job may be in flight
  // Shuts out direct origin writes, waits for those in flight and forgets
  // which chunks are clean (engine thread, writes quiesced). open_gate()
  // lets them in again.
  void close_gate();
  void open_gate() { gate_closed_.store(false); }
  // A deleted snapshot's read-map entries (nobody has it open).
  void forget_snapshot(SnapshotId id) { read_map_.forget_snapshot(id); }
  size_t read_map_entries() const { return read_map_.entries(); }
  SpaceScanTracker& space_scans() { return space_scans_; }

 private:
  // loop.cc
  bool try_direct_write(const VolumeRef& volume, const IoRequest& io, IoDone& done);
  bool try_direct_read(const VolumeRef& volume, const IoRequest& io, IoDone& done);
  void count_direct(bool write, const Status& s, uint64_t bytes);  // the counters of one of those
  void thread_main();
  void step(bool may_block);
  void take_incoming();
  void run_controls();
  void submit_control(ControlOp& op);  // queues op and returns once it ran
  void maybe_commit();
  void maybe_reclaim();
  void maybe_rollback();
  void rollback_checkpoint();
  void rollback_chunk(uint64_t c);
  VolumeRef internal_volume(const std::optional<SnapshotInfo>& snap);
  bool quiesced() const { return writes_in_flight_ == 0 && jobs_in_flight_ == 0; }
  void check_invariants() const;

  // request.cc
  void process(Request* r);
  void process_origin_write(Request* r);
  bool origin_chunk_is_hole(uint64_t c);
  void process_snapshot_read(Request* r);
  void process_snapshot_write(Request* r);
  void process_flush(Request* r);
  void process_block_status(Request* r);
  void issue(Request* r);
  void register_store_io(Request* r, std::vector<uint64_t> chunks);
  void op_done(Request* r, Status s);
  void finish(Request* r, Status s);
  bool store_writable(Request* r);
  // A write that got kNoSpace: parks it in space_waiters_ when
  // EngineOptions::on_no_space says space will be freed (returns true).
  bool wait_for_space(Request* r, const Status& s);
  void retry_space_waiters();

  // jobs.cc
  ChunkState& chunk(uint64_t c) { return chunks_[c]; }
  void tidy_chunk(uint64_t c);
  bool origin_blocked(uint64_t c);
  // The first pending job on chunk c that conflicts with snapshot s.
  const CopyJob* conflicting_job(uint64_t c, const SnapshotInfo& s);
  // Parks r behind a conflicting job of chunk c (or fails it when that job's
  // copy failed); returns false when r may go on.
  bool wait_for_conflicts(Request* r, uint64_t c);
  void park_on_chunk(Request* r, uint64_t c);
  void release(std::vector<Request*>& waiters);
  bool can_start_job(uint32_t slots);
  CopyJob* start_job(uint64_t c, const CopyPlan& plan);
  // Issues the I/O of the origin copies started since the last call, as
  // runs of consecutive chunks (E8).
  void submit_copies();
  void start_run(CopyRun* run);
  // Issues the run's store writes from buf (its chunks' bytes, adjacent).
  void write_run(CopyRun* run, uint8_t* buf);
  void run_done(CopyRun* run);
  void job_io_done(CopyJob* job, Status s);
  void job_finished(CopyJob* job);
  // Slot buffers: `count` adjacent ones, the longest free stretch up to
  // count (at least one; one is always free while a job may start).
  std::pair<uint32_t, uint32_t> take_slots(uint32_t count);
  void return_slots(uint32_t first, uint32_t count);
  uint8_t* slot_buffer(uint32_t slot) { return arena_ + uint64_t{slot} * chunk_size_; }
  uint32_t chunk_bytes_on_origin(uint64_t c) const;
  // Prepares chunk c of a snapshot for writing. Returns true when it is
  // writable (its exclusive store chunk in *out); false when a job was
  // started or the request had to wait (then *waiting says which).
  enum class Prep { kReady, kStarted, kParked, kFailed };
  Prep prepare_writable(Request* r, uint64_t c, ChunkMapping* out);

  BlockDevice& origin_;
  BlockDevice& store_dev_;
  std::unique_ptr<ExceptionStore> store_;
  std::unique_ptr<IoContext> io_;
  EngineOptions options_;
  const uint32_t chunk_size_;
  const uint64_t volume_size_;
  const uint64_t data_start_;  // byte offset of store chunk 0 (Layout::data_start)

  // Who owns what. Three kinds of state:
  //  * immutable after construction (above, and thread_/threaded_, set by
  //    start_thread() before any other thread can see the engine);
  //  * shared between the engine thread and client threads: under a Mutex
  //    (GUARDED_BY, checked by clang -Wthread-safety) or atomic;
  //  * owned by the engine thread: everything from run_queue_ down. Without
  //    an engine thread (threaded false) the one caller driving poll() plays
  //    its part. Store, cache, transaction manager and IoContext (except
  //    wake()) are engine-thread only too.
  // Client threads touch the devices directly for origin reads and direct
  // origin writes (FileDevice and MemoryDevice are thread-safe).

  // -- any thread, under in_mu_: work handed to the engine thread.
  Mutex in_mu_;
  std::vector<Request*> incoming_ GUARDED_BY(in_mu_);
  std::vector<ControlOp*> incoming_controls_ GUARDED_BY(in_mu_);
  // -- any thread, under control_mu_: ControlOp::done, waited for on control_cv_.
  Mutex control_mu_;
  CondVar control_cv_;
  // -- any thread, under volumes_->mu (the registry may outlive the engine).
  std::shared_ptr<VolumeRegistry> volumes_ = std::make_shared<VolumeRegistry>();
  // -- any thread, atomic.
  std::atomic<uint64_t> outstanding_{0};  // requests accepted and not yet done
  std::atomic<bool> stopping_{false};
  AtomicCounters counters_;
  // Direct origin writes (try_direct_write): client threads test clean_ and
  // announce themselves in direct_in_flight_; the engine thread marks
  // chunks clean, and shuts the gate before clearing (see close_gate()).
  CleanMap clean_;
  std::atomic<bool> gate_closed_{false};
  std::atomic<uint64_t> direct_in_flight_{0};
  // Snapshot reads of chunks in the store, on the caller's thread
  // (try_direct_read); the engine thread fills and empties it.
  ReadMap read_map_;
  // Mirror of store_->failure() (the one "store failed" state) for client
  // threads, which must not touch the store: try_direct_write() stops taking
  // the shortcut once it is set. Set on the engine thread by store_failure(),
  // which every engine check of the store's state goes through and which
  // runs right after whatever may fail the store (a copy job, a commit).
  // Never cleared: a failed store stays failed until it is reopened.
  std::atomic<bool> store_failed_{false};
  // -- set once by start_thread(), before the thread runs; read-only after.
  std::thread thread_;
  bool threaded_ = false;

  // -- engine thread only.
  std::deque<Request*> run_queue_;
  std::deque<ControlOp*> controls_;
  std::unordered_map<uint64_t, ChunkState> chunks_;
  std::vector<Request*> job_waiters_;
  std::vector<Request*> commit_waiters_;
  std::vector<Request*> quiesce_waiters_;
  std::vector<Request*> space_waiters_;  // kNoSpace, waiting for a snapshot delete to free space
  std::chrono::steady_clock::time_point last_space_retry_;
  std::unordered_set<SnapshotId> written_;  // snapshots known marked written
  std::vector<CopyJob*> jobs_done_;
  uint32_t slots_used_ = 0;
  bool commit_due_ = false;  // metadata changed outside a job (reclaim): commit before new copies
  uint32_t jobs_in_flight_ = 0;
  uint64_t writes_in_flight_ = 0;
  uint8_t* arena_ = nullptr;        // copy_slots chunk buffers, adjacent
  std::vector<uint8_t> slot_free_;  // per slot buffer: 1 when free
  uint32_t slot_cursor_ = 0;        // where take_slots starts looking
  std::vector<CopyJob*> unissued_;  // origin copies started, I/O not yet issued (E8)
  uint32_t max_run_chunks_ = 1;
  uint8_t* zero_buffer_ = nullptr;
  const uint8_t* origin_map_ = nullptr;  // origin_.map_read(), if EngineOptions::map_origin
  static constexpr uint64_t kMappedDropBytes = 64ull << 20;
  uint64_t mapped_since_drop_ = 0;  // bytes copied from the mapping since drop_mapped_pages()
  std::chrono::steady_clock::time_point last_commit_;
  std::chrono::steady_clock::time_point last_reclaim_;
  std::chrono::milliseconds reclaim_pause_{0};  // backs off after a failed step
  bool loop_exit_ = false;
  std::optional<Rollback> rollback_;

  // -- rollback state other threads read: the target atomically, the rest
  // under rollback_mu_ (waited for on rollback_cv_).
  std::atomic<SnapshotId> rollback_target_{0};  // 0: none
  Mutex rollback_mu_;
  CondVar rollback_cv_;
  bool rollback_done_ GUARDED_BY(rollback_mu_) = true;
  Status rollback_result_ GUARDED_BY(rollback_mu_);
  RollbackStatus rollback_progress_ GUARDED_BY(rollback_mu_);  // a copy of rollback_'s progress
  SpaceScanTracker space_scans_;
};

}  // namespace multisnap
