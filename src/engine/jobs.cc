// Copy jobs, chunk conflicts and the waiting lists (see core.h).
#include <algorithm>
#include <cassert>
#include <cstring>

#include "engine/core.h"
#include "util/log.h"

namespace multisnap {

void EngineCore::tidy_chunk(uint64_t c) {
  auto it = chunks_.find(c);
  if (it != chunks_.end() && it->second.jobs.empty() && it->second.origin_readers == 0 &&
      it->second.store_io == 0 && it->second.waiters.empty())
    chunks_.erase(it);
}

bool EngineCore::origin_blocked(uint64_t c) {
  auto it = chunks_.find(c);
  return it != chunks_.end() && (!it->second.jobs.empty() || it->second.origin_readers > 0);
}

const CopyJob* EngineCore::conflicting_job(uint64_t c, const SnapshotInfo& s) {
  auto it = chunks_.find(c);
  if (it == chunks_.end()) return nullptr;
  for (CopyJob* job : it->second.jobs)
    for (const CopyDescriptor& d : job->descriptors)
      if (store_->conflicts(d, s)) return job;
  return nullptr;
}

bool EngineCore::wait_for_conflicts(Request* r, uint64_t c) {
  const CopyJob* job = conflicting_job(c, *r->volume->snapshot());
  if (!job) return false;
  if (job->poisoned) {
    finish(r, make_error(Code::kIoError, "chunk {} of {} is unreadable until the store is reopened: {}", c,
                         r->volume->name(), job->status.to_string()));
    return true;
  }
  park_on_chunk(r, c);
  return true;
}

void EngineCore::park_on_chunk(Request* r, uint64_t c) {
  r->retried = true;
  chunk(c).waiters.push_back(r);
}

void EngineCore::release(std::vector<Request*>& waiters) {
  for (Request* r : waiters) run_queue_.push_back(r);
  waiters.clear();
}

bool EngineCore::can_start_job(uint32_t slots) {
  // A commit that is due goes first: new copies would only delay it.
  if (!jobs_done_.empty() || commit_due_) return false;
  // A job that needs two chunks (a split) may run alone even with one slot.
  return slots_used_ + slots <= options_.copy_slots || (slots_used_ == 0 && slots <= 2);
}

std::pair<uint32_t, uint32_t> EngineCore::take_slots(uint32_t count) {
  // Next fit: the first free stretch from the cursor on that is long enough,
  // else the longest one seen.
  const uint32_t n = static_cast<uint32_t>(slot_free_.size());
  uint32_t best = n, best_len = 0;
  for (uint32_t k = 0; k < n;) {
    uint32_t i = (slot_cursor_ + k) % n;
    if (!slot_free_[i]) {
      ++k;
      continue;
    }
    uint32_t len = 0;
    while (len < count && i + len < n && slot_free_[i + len]) ++len;
    if (len > best_len) best = i, best_len = len;
    if (len == count) break;
    k += len;
  }
  assert(best_len > 0);  // E4: a job that may start always finds a buffer
  for (uint32_t i = best; i < best + best_len; ++i) slot_free_[i] = 0;
  slot_cursor_ = (best + best_len) % n;
  return {best, best_len};
}

void EngineCore::return_slots(uint32_t first, uint32_t count) {
  for (uint32_t i = first; i < first + count; ++i) slot_free_[i] = 1;
}

uint32_t EngineCore::chunk_bytes_on_origin(uint64_t c) const {
  uint64_t start = c * chunk_size_;
  return static_cast<uint32_t>(std::min<uint64_t>(chunk_size_, volume_size_ - start));
}

CopyJob* EngineCore::start_job(uint64_t c, const CopyPlan& plan) {
  auto* job = new CopyJob;
  job->chunk = c;
  job->source = plan.source;
  job->source_chunk = plan.source_chunk;
  job->dests = plan.dests;
  job->descriptors.push_back(plan.descriptor);
  chunk(c).jobs.push_back(job);
  ++jobs_in_flight_;
  AtomicCounters::add(counters_.copy_jobs);
  AtomicCounters::add(counters_.chunks_copied, job->dests.size());
  if (job->dests.empty()) {  // metadata only: nothing to copy, only to commit
    job_io_done(job, Status::ok());
    return job;
  }
  slots_used_ += static_cast<uint32_t>(job->dests.size());
  if (plan.source == CopyPlan::Source::kOrigin) {
    // Issued with its neighbours by submit_copies() at the end of this pass
    // over the run queue (E8).
    unissued_.push_back(job);
    return job;
  }
  auto write_all = [this, job]() {
    const Layout& l = store_->layout();
    job->pending = static_cast<uint32_t>(job->dests.size());
    job->write_ops.resize(job->dests.size());
    for (size_t i = 0; i < job->dests.size(); ++i) {
      IoOp& w = job->write_ops[i];
      w.kind = IoOp::Kind::kWrite;
      w.dev = &store_dev_;
      w.offset = l.data_offset(job->dests[i]);
      w.buf = job->buffer;
      w.len = chunk_size_;
      w.direct = true;
      w.done = [this, job](Status s) {
        if (!s.is_ok() && job->status.is_ok()) job->status = s;
        if (--job->pending == 0) job_io_done(job, job->status);
      };
      io_->submit(&w);
    }
  };
  if (plan.source == CopyPlan::Source::kZero) {
    job->buffer = zero_buffer_;
    write_all();
    return job;
  }
  // From another store chunk (a split): one buffer, one read.
  job->buffer = slot_buffer(take_slots(1).first);
  IoOp& r = job->read_op;
  r.kind = IoOp::Kind::kRead;
  r.dev = &store_dev_;
  r.offset = store_->layout().data_offset(plan.source_chunk);
  r.len = chunk_size_;
  r.buf = job->buffer;
  r.done = [this, job, write_all](Status s) {
    if (!s.is_ok()) {
      job_io_done(job, s);
      return;
    }
    write_all();
  };
  io_->submit(&r);
  return job;
}

void EngineCore::submit_copies() {
  if (unissued_.empty()) return;
  std::vector<CopyJob*> jobs;
  jobs.swap(unissued_);
  // Adjacent chunks may come from different requests, in any order.
  std::sort(jobs.begin(), jobs.end(), [](const CopyJob* a, const CopyJob* b) { return a->chunk < b->chunk; });
  size_t i = 0;
  while (i < jobs.size()) {
    size_t j = i + 1;
    while (j < jobs.size() && j - i < max_run_chunks_ && jobs[j]->chunk == jobs[j - 1]->chunk + 1) ++j;
    // The run's buffers must be adjacent: a shorter stretch of free slot
    // buffers splits it (the rest is the next run).
    auto [first, got] = take_slots(static_cast<uint32_t>(j - i));
    auto* run = new CopyRun;
    run->first_slot = first;
    run->jobs.assign(jobs.begin() + static_cast<long>(i), jobs.begin() + static_cast<long>(i + got));
    start_run(run);
    i += got;
  }
}

void EngineCore::start_run(CopyRun* run) {
  AtomicCounters::add(counters_.copy_runs);
  run->first_chunk = run->jobs.front()->chunk;
  uint8_t* buffer = slot_buffer(run->first_slot);
  uint64_t bytes = 0;
  for (size_t k = 0; k < run->jobs.size(); ++k) {
    CopyJob* job = run->jobs[k];
    job->run = run;
    job->buffer = buffer + k * chunk_size_;
    bytes += chunk_bytes_on_origin(job->chunk);
  }
  const uint64_t whole = uint64_t{chunk_size_} * run->jobs.size();
  const uint64_t from = run->first_chunk * chunk_size_;
  // The origin's own page-cache pages as the source: no read, no copy into
  // a slot buffer (E2 keeps them unchanged until the job is done). Only
  // where they are all in memory: faulting them in would block this thread.
  // The run still holds its slots: they bound the copies in flight (E4).
  if (origin_map_ && bytes == whole && origin_.mapped_resident(from, whole)) {
    AtomicCounters::add(counters_.copy_runs_mapped);
    // The pages the writes map into this process stay mapped: dropped
    // every so often so page tables and RSS stay bounded (pages under a
    // write in flight are pinned by it, not by the mapping).
    mapped_since_drop_ += whole;
    if (mapped_since_drop_ >= kMappedDropBytes) {
      origin_.drop_mapped_pages();
      mapped_since_drop_ = 0;
    }
    write_run(run, const_cast<uint8_t*>(origin_map_ + from));
    return;
  }
  // Only the volume's last chunk can be short: zeros after its end.
  if (bytes < whole) std::memset(buffer + bytes, 0, whole - bytes);
  IoOp& r = run->read_op;
  r.kind = IoOp::Kind::kRead;
  r.dev = &origin_;
  r.offset = from;
  r.len = bytes;
  r.buf = buffer;
  r.done = [this, run, buffer](Status s) {
    if (!s.is_ok()) {
      run->status = s;
      run_done(run);
      return;
    }
    write_run(run, buffer);
  };
  io_->submit(&r);
}

void EngineCore::write_run(CopyRun* run, uint8_t* buf) {
  // Every (destination offset, buffer) pair, in store order; a stretch
  // that is adjacent both on the store and in the buffers is one write.
  const Layout& l = store_->layout();
  std::vector<std::pair<uint64_t, uint32_t>> targets;
  for (uint32_t k = 0; k < run->jobs.size(); ++k)
    for (uint64_t d : run->jobs[k]->dests) targets.emplace_back(l.data_offset(d), k);
  std::sort(targets.begin(), targets.end());
  for (size_t a = 0; a < targets.size();) {
    size_t b = a + 1;
    while (b < targets.size() && targets[b].first == targets[b - 1].first + chunk_size_ &&
           targets[b].second == targets[b - 1].second + 1)
      ++b;
    IoOp& w = run->write_ops.emplace_back();
    w.kind = IoOp::Kind::kWrite;
    w.dev = &store_dev_;
    w.offset = targets[a].first;
    w.buf = buf + uint64_t{targets[a].second} * chunk_size_;
    w.len = uint64_t{chunk_size_} * (b - a);
    w.direct = true;  // the arena, the mapping and the store's chunks are aligned (constructor)
    a = b;
  }
  run->pending = static_cast<uint32_t>(run->write_ops.size());
  for (IoOp& w : run->write_ops) {
    w.done = [this, run](Status ws) {
      if (!ws.is_ok() && run->status.is_ok()) run->status = ws;
      if (--run->pending == 0) run_done(run);
    };
    io_->submit(&w);
  }
}

void EngineCore::run_done(CopyRun* run) {
  return_slots(run->first_slot, static_cast<uint32_t>(run->jobs.size()));
  std::vector<CopyJob*> jobs;
  jobs.swap(run->jobs);
  Status s = run->status;
  delete run;  // the op completing now was moved out of it (io_context.h, complete)
  for (CopyJob* job : jobs) {
    job->run = nullptr;
    job->buffer = nullptr;
    job_io_done(job, s);
  }
}

void EngineCore::job_io_done(CopyJob* job, Status s) {
  if (!job->dests.empty()) counters_.copy_latency.record_since(job->started);
  --jobs_in_flight_;
  slots_used_ -= static_cast<uint32_t>(job->dests.size());
  if (job->buffer && job->buffer != zero_buffer_)  // a split's own buffer (runs return theirs)
    return_slots(static_cast<uint32_t>((job->buffer - arena_) / chunk_size_), 1);
  job->buffer = nullptr;
  if (!s.is_ok()) {
    // The remap already points at a chunk that did not get its data: it
    // must never be committed. Fail the store; reopening returns to the
    // last commit.
    job->status = s;
    MS_LOG_ERROR("copy for chunk {} failed, the store stops taking changes: {}", job->chunk, s.to_string());
    store_->fail(s.annotate("copy job")).ignore();
    store_failure();  // sets the mirror at once
  }
  jobs_done_.push_back(job);
  release(job_waiters_);
}

void EngineCore::job_finished(CopyJob* job) {
  ChunkState& cs = chunk(job->chunk);
  cs.jobs.erase(std::find(cs.jobs.begin(), cs.jobs.end(), job));
  release(cs.waiters);
  tidy_chunk(job->chunk);
  delete job;
}

EngineCore::Prep EngineCore::prepare_writable(Request* r, uint64_t c, ChunkMapping* out) {
  const SnapshotInfo& s = *r->volume->snapshot();
  auto m = store_->lookup(c, s, true);
  if (!m.is_ok()) {
    finish(r, m.status());
    return Prep::kFailed;
  }
  if (m->kind == ChunkMapping::Kind::kStore && m->exclusive) {
    *out = *m;
    return Prep::kReady;
  }
  if (!can_start_job(2)) {
    r->retried = true;
    job_waiters_.push_back(r);
    return Prep::kParked;
  }
  read_map_.forget_chunk(c);  // the mappings of c may change, other snapshots' too (read_map.h)
  auto plan = store_->make_chunk_writeable(c, s);
  if (!plan.is_ok()) {
    if (wait_for_space(r, plan.status())) return Prep::kParked;
    finish(r, plan.status());
    return Prep::kFailed;
  }
  start_job(c, *plan);
  return Prep::kStarted;
}

Status EngineCore::commit_now() {
  assert(jobs_in_flight_ == 0);  // E3
  bool was_ok = store_failure().is_ok();
  commit_due_ = false;
  auto started = std::chrono::steady_clock::now();
  Status s = store_->commit();
  last_commit_ = std::chrono::steady_clock::now();
  counters_.commit_latency.record(last_commit_ - started);
  AtomicCounters::add(counters_.commits);
  store_failure();  // a failed commit fails the store: mirror it at once
  if (!s.is_ok() && was_ok) MS_LOG_ERROR("commit failed, the store stops taking changes: {}", s.to_string());
  std::vector<CopyJob*> done;
  done.swap(jobs_done_);
  for (CopyJob* job : done) {
    if (job->status.is_ok()) {
      job_finished(job);
      continue;
    }
    // Its remap points at a chunk without the data: keep the job in place
    // so nothing reads through that remap; the waiters retry (and fail).
    job->poisoned = true;
    release(chunk(job->chunk).waiters);
  }
  release(commit_waiters_);
  release(job_waiters_);
  retry_space_waiters();
  return s;
}

}  // namespace multisnap
