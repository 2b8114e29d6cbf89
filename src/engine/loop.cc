// The engine loop: incoming work, control operations, group commit and
// background reclaim.
#include <algorithm>
#include <cassert>
#include <cstring>

#include "engine/core.h"
#include "util/log.h"

namespace multisnap {

namespace {
constexpr auto kReclaimPacing = std::chrono::milliseconds(100);
constexpr auto kSpaceRetry = std::chrono::milliseconds(200);  // writes waiting for space (on_no_space)
constexpr uint32_t kMaxRunBytes = 1u << 20;  // the longest copy run: one read of at most this
}

EngineCore::EngineCore(BlockDevice& origin, BlockDevice& store_dev, std::unique_ptr<ExceptionStore> store,
                       std::unique_ptr<IoContext> io, const EngineOptions& options)
    : origin_(origin), store_dev_(store_dev), store_(std::move(store)), io_(std::move(io)),
      options_(options), chunk_size_(store_->layout().chunk_size),
      volume_size_(store_->layout().origin_size), data_start_(store_->layout().data_start),
      clean_(store_->layout().origin_chunks(), options.clean_map_bytes), read_map_(options.read_map_entries) {
  if (options_.copy_slots == 0)
    options_.copy_slots = static_cast<uint32_t>(std::clamp<uint64_t>(
        (16u << 20) / chunk_size_, 8, std::max<uint64_t>(64, (4u << 20) / chunk_size_)));
  // One arena, so that a run of chunks can be read into adjacent buffers.
  // Copies are written with IoOp::direct: slot buffers, the zero buffer and
  // store chunks are all multiples of kDirectAlign.
  static_assert(kBlockSize % kDirectAlign == 0);
  assert(chunk_size_ % kDirectAlign == 0 && store_->layout().data_offset(0) % kDirectAlign == 0);
  arena_ = static_cast<uint8_t*>(std::aligned_alloc(kDirectAlign, uint64_t{options_.copy_slots} * chunk_size_));
  slot_free_.assign(options_.copy_slots, 1);
  max_run_chunks_ = std::max<uint32_t>(1, kMaxRunBytes / chunk_size_);
  zero_buffer_ = static_cast<uint8_t*>(std::aligned_alloc(kDirectAlign, chunk_size_));
  std::memset(zero_buffer_, 0, chunk_size_);
  last_commit_ = last_reclaim_ = std::chrono::steady_clock::now();
  if (options_.map_origin) origin_map_ = origin_.map_read();
}

EngineCore::~EngineCore() {
  shutdown();
  // Jobs whose copy failed stay registered until here (see commit_now);
  // every job, done or not, is in its chunk's list.
  for (auto& [c, cs] : chunks_)
    for (CopyJob* job : cs.jobs) delete job;

  std::free(arena_);
  std::free(zero_buffer_);
}

void EngineCore::start_thread() {
  threaded_ = true;
  thread_ = std::thread([this] { thread_main(); });
}

void EngineCore::thread_main() {
  while (!loop_exit_) step(true);
}

void EngineCore::shutdown() {
  if (stopping_.exchange(true)) {
    if (thread_.joinable()) thread_.join();
    return;
  }
  // Let what was accepted finish, then commit and flush everything.
  while (outstanding_.load() > 0) {
    if (threaded_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    else step(false);
  }
  run_control(true, [this] {
    Status s = commit_now();
    if (s.is_ok()) s = origin_.flush();
    if (s.is_ok()) s = store_dev_.flush();
    if (!s.is_ok()) MS_LOG_ERROR("final sync failed: {}", s.to_string());
    loop_exit_ = true;
  });
  if (thread_.joinable()) thread_.join();
}

// ---------------------------------------------------------------- entry points

void EngineCore::submit(const VolumeRef& volume, const IoRequest& io, IoDone done) {
  // Counted before stopping_ is looked at (shutdown() sets it, then waits
  // for the count to drop), so a request is either refused or waited for,
  // also the ones served on this thread, which use the engine's devices
  // and maps. A queued request is uncounted by finish().
  ++outstanding_;
  struct Uncount {
    std::atomic<uint64_t>& n;
    bool queued = false;
    ~Uncount() {
      if (!queued) --n;
    }
  } uncount{outstanding_};
  if (stopping_) {
    done(Status(Code::kShutdown, "the engine is shutting down"));
    return;
  }
  bool writes = io.op == IoRequest::Op::kWrite || io.op == IoRequest::Op::kTrim ||
                io.op == IoRequest::Op::kWriteZeroes;
  if (io.op != IoRequest::Op::kFlush) {
    if (io.offset > volume->size() || io.length > volume->size() - io.offset) {
      done(make_error(Code::kOutOfRange, "{}: {} bytes at offset {} are past the end ({} bytes)",
                      volume->name(), io.length, io.offset, volume->size()));
      return;
    }
    if (writes && volume->read_only()) {
      done(make_error(Code::kReadOnly, "{} is read-only", volume->name()));
      return;
    }
    if (io.length == 0) {
      done(Status::ok());
      return;
    }
  }
  if (io.op == IoRequest::Op::kRead && volume->is_origin()) {
    // Origin reads touch no metadata: straight to the device, on this thread.
    Status s = origin_.read(io.offset, io.buf, io.length);
    AtomicCounters::add(counters_.reads);
    if (s.is_ok()) AtomicCounters::add(counters_.bytes_read, io.length);
    else AtomicCounters::add(counters_.errors);
    done(std::move(s));
    return;
  }
  if (io.op == IoRequest::Op::kWrite && volume->is_origin() && try_direct_write(volume, io, done)) return;
  if (io.op == IoRequest::Op::kRead && !volume->is_origin() && try_direct_read(volume, io, done)) return;
  auto* r = new Request;
  r->volume = volume;
  r->io = io;
  r->done = std::move(done);
  uncount.queued = true;
  {
    MutexLock lock(in_mu_);
    incoming_.push_back(r);
  }
  io_->wake();
}

// The shortcut for origin writes to clean chunks. The gate is a Dekker-style
// handshake with close_gate(): announce ourselves, then look at the gate;
// close_gate() shuts it, then waits for the announced writers to leave.
bool EngineCore::try_direct_write(const VolumeRef&, const IoRequest& io, IoDone& done) {
  if (options_.clean_map_bytes == 0 || store_failed_.load(std::memory_order_relaxed)) return false;
  direct_in_flight_.fetch_add(1);
  bool clean = !gate_closed_.load();
  for (uint64_t c = io.offset / chunk_size_; clean && c <= (io.offset + io.length - 1) / chunk_size_; ++c)
    clean = clean_.test(c);
  if (!clean) {
    direct_in_flight_.fetch_sub(1);
    return false;
  }
  Status s = io.fua ? origin_.write_fua(io.offset, io.buf, io.length) : origin_.write(io.offset, io.buf, io.length);
  direct_in_flight_.fetch_sub(1);
  count_direct(true, s, io.length);
  done(std::move(s));
  return true;
}

// A request served on the caller's thread, in the counters.
void EngineCore::count_direct(bool write, const Status& s, uint64_t bytes) {
  AtomicCounters::add(write ? counters_.writes : counters_.reads);
  AtomicCounters::add(write ? counters_.direct_writes : counters_.direct_reads);
  if (s.is_ok()) AtomicCounters::add(write ? counters_.bytes_written : counters_.bytes_read, bytes);
  else AtomicCounters::add(counters_.errors);
}

// The shortcut for snapshot reads: every chunk the read touches must be in
// the read map (in the store, or zeros); the reads run inside a read-map
// epoch, so nothing the map said can change or be freed until they are done.
bool EngineCore::try_direct_read(const VolumeRef& volume, const IoRequest& io, IoDone& done) {
  if (!read_map_.enabled() || store_failed_.load(std::memory_order_relaxed)) return false;
  const SnapshotId id = volume->snapshot()->id;
  const uint64_t first = io.offset / chunk_size_, last = (io.offset + io.length - 1) / chunk_size_;
  if (last - first >= 64) return false;  // large reads gain nothing here; keep the epoch short
  uint64_t where[64];
  uint64_t epoch = read_map_.enter();
  if (!read_map_.find_run(id, first, last, where)) {
    read_map_.leave(epoch);
    return false;
  }
  Status s;
  uint64_t pos = io.offset;
  const uint64_t end = io.offset + io.length;
  while (pos < end && s.is_ok()) {
    // A run of chunks that are consecutive in the store is one read.
    uint64_t c = pos / chunk_size_;
    uint64_t x = where[c - first];
    uint64_t run_end = std::min(end, (c + 1) * chunk_size_);
    while (run_end < end) {
      uint64_t n = run_end / chunk_size_;
      uint64_t y = where[n - first];
      if (x == ReadMap::kZeros ? y != ReadMap::kZeros : y != x + (n - c)) break;
      run_end = std::min(end, (n + 1) * chunk_size_);
    }
    uint8_t* dst = io.buf + (pos - io.offset);
    if (x == ReadMap::kZeros) {
      std::memset(dst, 0, run_end - pos);
    } else {
      // Copies are written around the page cache: the first read of a
      // chunk brings the whole chunk in, not only the pages asked for.
      const uint64_t n = (run_end - 1) / chunk_size_ - c + 1;
      s = store_dev_.read_around(data_start_ + x * chunk_size_ + (pos - c * chunk_size_), dst, run_end - pos,
                                 data_start_ + x * chunk_size_, n * chunk_size_);
    }
    pos = run_end;
  }
  read_map_.leave(epoch);
  count_direct(false, s, io.length);
  done(std::move(s));
  return true;
}

void EngineCore::close_gate() {
  gate_closed_.store(true);
  while (direct_in_flight_.load() > 0) std::this_thread::yield();
  clean_.clear();
}

void EngineCore::block_status(const VolumeRef& volume, uint64_t offset, uint64_t length, ExtentsDone done) {
  if (offset > volume->size() || length > volume->size() - offset || length == 0) {
    done(make_error(Code::kOutOfRange, "{}: block status of {} bytes at {} is out of range", volume->name(),
                    length, offset));
    return;
  }
  ++outstanding_;  // as in submit()
  if (stopping_ || volume->is_origin()) {
    Result<std::vector<AllocationExtent>> result = Status(Code::kShutdown, "the engine is shutting down");
    if (!stopping_) {
      auto a = origin_.allocation(offset, length);
      if (a.is_ok()) {
        std::vector<AllocationExtent> out;
        for (auto& e : *a) out.push_back({e.length, e.hole, e.hole});
        result = std::move(out);
      } else {
        result = a.status();
      }
    }
    --outstanding_;
    return done(std::move(result));
  }
  auto* r = new Request;
  r->volume = volume;
  r->io = {IoRequest::Op::kCache, offset, length, nullptr, false};
  r->extents_done = std::move(done);
  {
    MutexLock lock(in_mu_);
    incoming_.push_back(r);
  }
  io_->wake();
}

void EngineCore::run_control(bool needs_quiesce, std::function<void()> fn) {
  ControlOp op;
  op.needs_quiesce = needs_quiesce;
  op.run = std::move(fn);
  submit_control(op);
}

void EngineCore::run_control_committed(std::function<void()> fn, std::function<void(Status)> committed) {
  ControlOp op;
  op.needs_quiesce = true;  // E3: its commit must not happen while a copy is in flight
  op.run = std::move(fn);
  op.committed = std::move(committed);
  submit_control(op);
}

void EngineCore::submit_control(ControlOp& op) {
  {
    MutexLock lock(in_mu_);
    incoming_controls_.push_back(&op);
  }
  io_->wake();
  auto finished = [&] {
    MutexLock lock(control_mu_);
    return op.done;
  };
  if (threaded_ && std::this_thread::get_id() != thread_.get_id()) {
    MutexLock lock(control_mu_);
    while (!op.done) control_cv_.wait(control_mu_);
    return;
  }
  while (!finished()) step(false);
}

Result<VolumeRef> EngineCore::open_volume(std::string_view name) {
  auto v = std::shared_ptr<Volume>(new Volume);
  v->size_ = volume_size_;
  if (name.empty() || name == "origin") {
    if (SnapshotId t = rollback_target_.load(); t != 0)
      return make_error(Code::kBusy, "the origin is being rolled back to snapshot {}; it is offered again when that is done", t);
    v->name_ = "origin";
    v->registry_ = volumes_;
    MutexLock lock(volumes_->mu);
    ++volumes_->open_volumes;
    ++volumes_->open_origins;
    return v;
  }
  constexpr std::string_view kPrefix = "snapshot/";
  if (name.substr(0, kPrefix.size()) != kPrefix)
    return make_error(Code::kNotFound, "no volume named '{}' (use origin or snapshot/<id or name>)", name);
  std::string key(name.substr(kPrefix.size()));
  Status status;
  run_control(false, [&] {
    bool numeric = !key.empty() && key.find_first_not_of("0123456789") == std::string::npos && key.size() <= 10;
    Result<std::optional<SnapshotInfo>> found =
        numeric ? store_->find_snapshot(static_cast<SnapshotId>(std::stoull(key)))
                : store_->find_snapshot(std::string_view(key));
    if (!found.is_ok()) {
      status = found.status();
      return;
    }
    if (!*found || (numeric && std::stoull(key) > UINT32_MAX)) {
      status = make_error(Code::kNotFound, "there is no snapshot '{}'", key);
      return;
    }
    v->snapshot_ = **found;
    v->name_ = "snapshot/" + std::to_string((*found)->id);
    v->read_only_ = options_.read_only_snapshots;
    v->registry_ = volumes_;
    MutexLock lock(volumes_->mu);
    ++volumes_->open_snapshots[(*found)->id];
    ++volumes_->open_volumes;
  });
  if (!status.is_ok()) return status;
  return v;
}

void VolumeRegistry::closed(const Volume& v) {
  MutexLock lock(mu);
  --open_volumes;
  if (!v.snapshot()) --open_origins;
  if (v.snapshot()) {
    auto it = open_snapshots.find(v.snapshot()->id);
    if (it != open_snapshots.end() && --it->second == 0) open_snapshots.erase(it);
  }
}

uint64_t VolumeRegistry::open_count(SnapshotId id) {
  MutexLock lock(mu);
  auto it = open_snapshots.find(id);
  return it == open_snapshots.end() ? 0 : it->second;
}

uint64_t EngineCore::open_volumes() {
  MutexLock lock(volumes_->mu);
  return volumes_->open_volumes;
}

// ---------------------------------------------------------------- the loop

void EngineCore::take_incoming() {
  MutexLock lock(in_mu_);
  for (Request* r : incoming_) run_queue_.push_back(r);
  incoming_.clear();
  for (ControlOp* c : incoming_controls_) controls_.push_back(c);
  incoming_controls_.clear();
}

void EngineCore::run_controls() {
  std::vector<ControlOp*> batch;  // run, waiting for their shared commit
  auto finish = [this](ControlOp* op) {
    {
      MutexLock lock(control_mu_);
      op->done = true;
    }
    control_cv_.notify_all();
  };
  auto commit_batch = [&] {
    Status s = commit_now();
    for (ControlOp* b : batch) {
      b->committed(s);
      finish(b);
    }
    batch.clear();
  };
  while (!controls_.empty()) {
    ControlOp* op = controls_.front();
    if (op->needs_quiesce && !quiesced()) {  // writes are held back meanwhile
      if (!batch.empty()) commit_batch();    // (not reached today: nothing in a batch starts I/O)
      return;
    }
    controls_.pop_front();
    op->run();
    if (op->committed) {
      batch.push_back(op);
      // Nothing ran in between, so the next one in a row is quiesced too.
      if (!controls_.empty() && controls_.front()->committed) continue;
      commit_batch();
    } else {
      finish(op);
    }
    if (controls_.empty() || !controls_.front()->needs_quiesce) release(quiesce_waiters_);
  }
}

void EngineCore::maybe_commit() {
  if (jobs_in_flight_ > 0) return;  // E3: never commit a remap before its copy is done
  bool due = !jobs_done_.empty() || !commit_waiters_.empty() || commit_due_;
  if (!due && store_->has_changes() && store_failure().is_ok() &&
      std::chrono::steady_clock::now() - last_commit_ > std::chrono::milliseconds(options_.commit_interval_ms))
    due = true;
  if (due) commit_now().ignore();
}

// One bounded step of background reclaim, then a commit as soon as no copy
// is in flight (copies in flight may finish first; new ones wait for it).
void EngineCore::maybe_reclaim() {
  if (!store_->reclaim_pending() || !store_failure().is_ok() || commit_due_) return;
  auto now = std::chrono::steady_clock::now();
  bool idle_now = run_queue_.empty() && writes_in_flight_ == 0 && io_->in_flight() == 0;
  if (now - last_reclaim_ < (idle_now ? reclaim_pause_ : std::max(reclaim_pause_, kReclaimPacing))) return;
  last_reclaim_ = now;
  Status s = store_->reclaim_step(options_.reclaim_budget);
  commit_due_ = true;  // what the step did (maybe part of it) is committed either way
  if (!s.is_ok()) {
    if (reclaim_pause_ == std::chrono::milliseconds(0)) MS_LOG_WARN("background reclaim paused: {}", s.to_string());
    reclaim_pause_ = std::chrono::seconds(5);
    return;
  }
  reclaim_pause_ = std::chrono::milliseconds(0);
  maybe_commit();
}

void EngineCore::step(bool may_block) {
  take_incoming();
  run_controls();
  for (size_t n = run_queue_.size(); n > 0 && !run_queue_.empty(); --n) {
    Request* r = run_queue_.front();
    run_queue_.pop_front();
    process(r);
  }
  submit_copies();  // E8: before anything may commit or wait
  maybe_commit();
  run_controls();
  maybe_reclaim();
  maybe_rollback();
  if (!space_waiters_.empty() &&
      (stopping_ || std::chrono::steady_clock::now() - last_space_retry_ > kSpaceRetry))
    retry_space_waiters();
#ifndef NDEBUG
  check_invariants();
#endif
  bool control_ready = !controls_.empty() && (!controls_.front()->needs_quiesce || quiesced());
  bool busy = !run_queue_.empty() || control_ready;
  {
    MutexLock lock(in_mu_);
    busy = busy || !incoming_.empty() || !incoming_controls_.empty();
  }
  int timeout = store_->reclaim_pending() ? 100 : static_cast<int>(options_.commit_interval_ms);
  if (commit_due_) timeout = 10;
  if (!space_waiters_.empty()) timeout = std::min<int>(timeout, kSpaceRetry.count());
  io_->run(may_block && !busy && !loop_exit_, timeout);
}

bool EngineCore::idle() {
  MutexLock lock(in_mu_);
  return outstanding_.load() == 0 && incoming_.empty() && incoming_controls_.empty() && controls_.empty() &&
         io_->in_flight() == 0 && jobs_in_flight_ == 0 && jobs_done_.empty();
}

void EngineCore::run_until_idle() {
  for (int spins = 0; !idle(); ++spins) step(false);
}

void EngineCore::check_invariants() const {
  assert(slots_used_ <= std::max<uint32_t>(options_.copy_slots, 2));  // E4
  assert(unissued_.empty());                                            // E8
  for (const auto& [c, cs] : chunks_) {
    (void)c;
    assert(!cs.jobs.empty() || cs.origin_readers > 0 || cs.store_io > 0 || !cs.waiters.empty());  // E5
  }
}

}  // namespace multisnap
