// Rollback: the origin is rewritten with a snapshot's data where they
// differ, by internal requests that take the normal paths (a snapshot read,
// then an origin write that preserves what other snapshots still need), in
// batches on the engine thread, like reclaim. After each batch the origin is
// flushed and the position committed (property kRollbackProperty: u32
// target, u64 next chunk), so a crash resumes it from there.
#include <cstring>

#include "engine/core.h"
#include "util/endian.h"
#include "util/log.h"

namespace multisnap {

namespace {
constexpr uint32_t kBatchChunks = 32;

std::string encode_position(SnapshotId target, uint64_t next) {
  std::string s(12, '\0');
  store_le(s.data(), target);
  store_le(s.data() + 4, next);
  return s;
}
}  // namespace

VolumeRef EngineCore::internal_volume(const std::optional<SnapshotInfo>& snap) {
  auto v = std::shared_ptr<Volume>(new Volume);
  v->size_ = volume_size_;
  v->snapshot_ = snap;
  v->name_ = snap ? "snapshot/" + std::to_string(snap->id) : "origin";
  v->registry_ = volumes_;
  MutexLock lock(volumes_->mu);
  ++volumes_->open_volumes;
  if (snap) ++volumes_->open_snapshots[snap->id];
  else ++volumes_->open_origins;
  return v;
}

Status EngineCore::start_rollback(const SnapshotInfo& target, uint64_t next_chunk) {
  Rollback rb;
  rb.target = target.id;
  rb.next_chunk = rb.batch_end = next_chunk;
  // The work ahead, for progress: a pass over the target's exceptions.
  MS_TRY(store_->diff(target, nullptr, next_chunk, [&](uint64_t) {
    ++rb.total_chunks;
    return true;
  }));
  MS_TRY(store_->set_property(kRollbackProperty, encode_position(target.id, next_chunk)));
  rb.snap = internal_volume(target);
  rb.origin = internal_volume(std::nullopt);
  rollback_ = std::move(rb);
  rollback_target_ = target.id;
  MutexLock lock(rollback_mu_);
  rollback_done_ = false;
  rollback_result_ = Status::ok();
  rollback_progress_ = {true, target.id, 0, rollback_->total_chunks, ""};
  return Status::ok();
}

void EngineCore::rollback_chunk(uint64_t c) {
  struct Io {
    std::vector<uint8_t> buf;
  };
  auto io = std::make_shared<Io>();
  const uint64_t len = chunk_bytes_on_origin(c);
  io->buf.resize(len);
  ++rollback_->in_flight;
  auto submit = [this](const VolumeRef& v, IoRequest req, IoDone done) {
    auto* r = new Request;
    r->volume = v;
    r->io = req;
    r->done = std::move(done);
    ++outstanding_;
    run_queue_.push_back(r);
  };
  submit(rollback_->snap, {IoRequest::Op::kRead, c * chunk_size_, len, io->buf.data(), false},
         [this, c, io, len, submit](Status s) {
           if (!s.is_ok()) {
             if (rollback_->error.is_ok()) rollback_->error = s.annotate(fmt::format("rollback: reading chunk {}", c));
             --rollback_->in_flight;
             return;
           }
           submit(rollback_->origin, {IoRequest::Op::kWrite, c * chunk_size_, len, io->buf.data(), false},
                  [this, c, io](Status w) {
                    if (!w.is_ok() && rollback_->error.is_ok())
                      rollback_->error = w.annotate(fmt::format("rollback: writing chunk {}", c));
                    ++rollback_->done_chunks;
                    --rollback_->in_flight;
                  });
         });
}

// The batch is done: make its writes durable, then its position.
void EngineCore::rollback_checkpoint() {
  Rollback& rb = *rollback_;
  Status s = origin_.flush();
  if (s.is_ok()) s = store_->set_property(kRollbackProperty, encode_position(rb.target, rb.batch_end));
  if (!s.is_ok()) {
    rb.error = s.annotate("rollback checkpoint");
    return;
  }
  rb.next_chunk = rb.batch_end;
  commit_due_ = true;
}

void EngineCore::maybe_rollback() {
  if (!rollback_ || rollback_->in_flight > 0) return;
  Rollback& rb = *rollback_;
  auto finish_with = [&](Status result) {
    if (!result.is_ok()) MS_LOG_ERROR("rollback to snapshot {} stopped: {} (it resumes when the store is opened again)",
                                      rb.target, result.to_string());
    else MS_LOG_INFO("rolled the origin back to snapshot {} ({} chunks)", rb.target, rb.done_chunks);
    rollback_.reset();  // releases the internal volumes
    if (result.is_ok()) rollback_target_ = 0;  // else the origin stays shut until a reopen
    MutexLock lock(rollback_mu_);
    rollback_done_ = true;
    rollback_result_ = result;
    rollback_progress_.active = !result.is_ok();
    rollback_progress_.error = result.is_ok() ? "" : result.to_string();
    rollback_cv_.notify_all();
  };
  if (rb.error.is_ok() && !store_failure().is_ok()) rb.error = store_failure();
  if (!rb.error.is_ok()) return finish_with(rb.error);
  if (rb.batch_end != rb.next_chunk) {
    rollback_checkpoint();
    if (!rb.error.is_ok()) return finish_with(rb.error);
  }
  {
    MutexLock lock(rollback_mu_);
    rollback_progress_.done_chunks = rb.done_chunks;
  }
  if (stopping_ || commit_due_) return;  // the checkpoint commits first; a stopping engine starts nothing new
  auto snap = store_->find_snapshot(rb.target);
  if (!snap.is_ok() || !*snap) {
    return finish_with(snap.is_ok() ? make_error(Code::kNotFound, "snapshot {} is gone", rb.target) : snap.status());
  }
  std::vector<uint64_t> batch;
  Status s = store_->diff(**snap, nullptr, rb.next_chunk, [&](uint64_t c) {
    batch.push_back(c);
    return batch.size() < kBatchChunks;
  });
  if (!s.is_ok()) return finish_with(s);
  if (batch.empty()) {
    s = store_->set_property(kRollbackProperty, std::nullopt);
    if (s.is_ok()) s = commit_now();  // no job is in flight: only the property changed since the checkpoint
    return finish_with(s);
  }
  for (uint64_t c : batch) rollback_chunk(c);
  rb.batch_end = batch.back() + 1;
}

RollbackStatus EngineCore::rollback_status() {
  MutexLock lock(rollback_mu_);
  return rollback_progress_;
}

Status EngineCore::wait_rollback() {
  if (!threaded_) {
    for (;;) {
      {
        MutexLock lock(rollback_mu_);
        if (rollback_done_) return rollback_result_;
      }
      step(false);
    }
  }
  MutexLock lock(rollback_mu_);
  while (!rollback_done_) rollback_cv_.wait(rollback_mu_);
  return rollback_result_;
}

// ---------------------------------------------------------------- Engine

Status Engine::start_rollback(SnapshotId target) {
  Status result;
  core_->run_control(true, [&] {
    ExceptionStore& st = core_->store();
    if (!core_->store_failure().is_ok()) {
      result = core_->store_failure();
      return;
    }
    if (core_->rolling_back_to() != 0) {
      result = make_error(Code::kBusy, "a rollback to snapshot {} is running", core_->rolling_back_to());
      return;
    }
    if (st.pending_receive().active()) {
      result = make_error(Code::kBusy, "a receive is pending; finish it or `multisnap receive --abort` first");
      return;
    }
    auto snap = st.find_snapshot(target);
    if (!snap.is_ok() || !*snap) {
      result = snap.is_ok() ? make_error(Code::kNotFound, "there is no snapshot {}", target) : snap.status();
      return;
    }
    if (uint64_t n = core_->open_origins(); n > 0) {
      result = make_error(Code::kBusy, "the origin is open ({} user(s)); close it, or use --force", n);
      return;
    }
    result = core_->start_rollback(**snap, 0);
    if (result.is_ok()) result = core_->commit_now();
  });
  if (result.is_ok()) MS_LOG_INFO("rolling the origin back to snapshot {}", target);
  return result;
}

RollbackStatus Engine::rollback_status() { return core_->rollback_status(); }
Status Engine::wait_rollback() { return core_->wait_rollback(); }

}  // namespace multisnap
