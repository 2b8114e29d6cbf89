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

uint8_t* EngineCore::take_buffer() {
  uint8_t* b = free_buffers_.back();
  free_buffers_.pop_back();
  return b;
}

void EngineCore::return_buffer(uint8_t* b) { free_buffers_.push_back(b); }

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
  job->buffer = take_buffer();
  IoOp& r = job->read_op;
  r.kind = IoOp::Kind::kRead;
  if (plan.source == CopyPlan::Source::kOrigin) {
    r.dev = &origin_;
    r.offset = c * chunk_size_;
    r.len = chunk_bytes_on_origin(c);
    if (r.len < chunk_size_) std::memset(job->buffer + r.len, 0, chunk_size_ - r.len);
  } else {
    r.dev = &store_dev_;
    r.offset = store_->layout().data_offset(plan.source_chunk);
    r.len = chunk_size_;
  }
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

void EngineCore::job_io_done(CopyJob* job, Status s) {
  if (!job->dests.empty()) counters_.copy_latency.record_since(job->started);
  --jobs_in_flight_;
  slots_used_ -= static_cast<uint32_t>(job->dests.size());
  if (job->buffer && job->buffer != zero_buffer_) return_buffer(job->buffer);
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
