// What the engine does with each request (docs/design.md, "Request flow").
#include <cstring>

#include "engine/core.h"
#include "util/log.h"

namespace multisnap {

namespace {
// The chunks [first, last] a byte range touches.
struct ChunkSpan {
  uint64_t first, last;
};
ChunkSpan span_of(uint64_t offset, uint64_t length, uint32_t chunk) {
  return {offset / chunk, (offset + length - 1) / chunk};
}
// The part of [offset, offset+length) inside chunk c: start and length.
std::pair<uint64_t, uint64_t> part_in_chunk(uint64_t offset, uint64_t length, uint64_t c, uint32_t chunk) {
  uint64_t lo = std::max(offset, c * chunk);
  uint64_t hi = std::min(offset + length, (c + 1) * chunk);
  return {lo, hi - lo};
}

// Appends a data op, merging it into the previous one when contiguous.
void add_op(std::deque<IoOp>& ops, IoOp::Kind kind, BlockDevice* dev, uint64_t dev_offset, uint8_t* buf,
            uint64_t len, bool fua) {
  if (!ops.empty()) {
    IoOp& last = ops.back();
    bool contiguous = last.kind == kind && last.dev == dev && last.offset + last.len == dev_offset &&
                      (buf == nullptr || static_cast<uint8_t*>(last.buf) + last.len == buf);
    if (contiguous) {
      last.len += len;
      return;
    }
  }
  IoOp op;
  op.kind = kind;
  op.fua = fua;
  op.dev = dev;
  op.offset = dev_offset;
  op.buf = buf;
  op.len = len;
  ops.push_back(std::move(op));
}
}  // namespace

void EngineCore::process(Request* r) {
  if (r->retried) {
    AtomicCounters::add(counters_.retries);
    r->retried = false;
  }
  if (r->extents_done) {
    process_block_status(r);
    return;
  }
  switch (r->io.op) {
    case IoRequest::Op::kFlush: process_flush(r); return;
    case IoRequest::Op::kCache: finish(r, Status::ok()); return;
    case IoRequest::Op::kRead:
      if (r->volume->is_origin()) {  // normally served on the caller's thread
        add_op(r->ops, IoOp::Kind::kRead, &origin_, r->io.offset, r->io.buf, r->io.length, false);
        issue(r);
      } else {
        process_snapshot_read(r);
      }
      return;
    default: break;
  }
  if (!controls_.empty() && controls_.front()->needs_quiesce) {
    quiesce_waiters_.push_back(r);  // a snapshot is being taken: writes wait
    return;
  }
  if (!store_writable(r)) return;
  if (r->volume->is_origin()) process_origin_write(r);
  else process_snapshot_write(r);
}

bool EngineCore::wait_for_space(Request* r, const Status& s) {
  if (s.code() != Code::kNoSpace || !options_.on_no_space || stopping_) return false;
  auto now = std::chrono::steady_clock::now();
  if (r->space_wait_since == std::chrono::steady_clock::time_point{}) r->space_wait_since = now;
  else if (now - r->space_wait_since > std::chrono::milliseconds(options_.no_space_wait_ms)) return false;
  // A reclaim under way may free what is needed (it commits each step, and
  // space freed becomes usable at that commit); only otherwise ask.
  if (!store_->reclaim_pending() && !options_.on_no_space()) return false;
  r->retried = true;
  space_waiters_.push_back(r);
  return true;
}

void EngineCore::retry_space_waiters() {
  last_space_retry_ = std::chrono::steady_clock::now();
  release(space_waiters_);
}

bool EngineCore::store_writable(Request* r) {
  const Status& failed = store_failure();
  if (failed.is_ok()) return true;
  // Without a working store nothing written could be preserved or remapped
  // safely, so writes stop; reads go on.
  finish(r, Status(Code::kFailed, "the store failed and must be reopened: " + failed.to_string()));
  return false;
}

// Origin write, trim or write-zeroes: preserve what snapshots still need,
// wait for that to be committed, then write the origin.
void EngineCore::process_origin_write(Request* r) {
  // Replication needs to know whether the origin changed since the newest
  // snapshot; that must be durable before the origin changes.
  if (store_->record_origin_change() || store_->origin_change_uncommitted()) {
    r->retried = true;
    commit_waiters_.push_back(r);
    return;
  }
  ChunkSpan span = span_of(r->io.offset, r->io.length, chunk_size_);
  for (uint64_t c = span.first; c <= span.last; ++c) {
    if (origin_blocked(c)) {
      park_on_chunk(r, c);
      return;
    }
  }
  std::optional<uint64_t> waiting_on;
  const bool zeroing = r->io.op != IoRequest::Op::kWrite;
  bool changes_origin = false;
  for (uint64_t c = span.first; c <= span.last; ++c) {
    // A chunk that is a hole on the origin reads as zeros: zeroing it
    // changes nothing, and snapshots that need its old contents get a zero
    // mapping instead of a copy (no read, no write, no store chunk).
    const bool hole = origin_chunk_is_hole(c);
    if (hole && zeroing) continue;
    changes_origin = true;
    // The seed's loop: ask for each set of snapshots still needing the old
    // contents, give each a chunk, until done or out of copy slots.
    CopyPlan plan;
    plan.source = hole ? CopyPlan::Source::kZero : CopyPlan::Source::kOrigin;
    std::vector<CopyDescriptor> descriptors;
    bool starved = false;
    Status error;
    store_->reset_query(c);
    for (;;) {
      auto more = store_->query_next_remap();
      if (!more.is_ok()) {
        error = more.status();
        break;
      }
      if (!*more) break;
      // A zero mapping takes no copy slot and need not wait for a commit
      // that is due: a whole run of holes is recorded in one commit.
      if (!hole && !can_start_job(static_cast<uint32_t>(plan.dests.size()) + 1)) {
        starved = true;
        break;
      }
      CopyDescriptor d;
      auto dest = store_->add_next_remap(&d, hole);
      if (!dest.is_ok()) {
        error = dest.status();
        break;
      }
      if (!hole) plan.dests.push_back(*dest);
      descriptors.push_back(d);
    }
    if (!descriptors.empty()) {
      // One read of the origin chunk, one write per destination; for a
      // hole, only the metadata to commit.
      CopyJob* job = start_job(c, plan);
      job->descriptors = std::move(descriptors);
      waiting_on = c;
    } else if (error.is_ok() && !starved) {
      // Nothing pending, nobody reading it from the origin, nothing to
      // preserve: later writes to it may skip the engine (clean_map.h).
      clean_.mark(c);
    }
    if (!error.is_ok()) {
      if (!wait_for_space(r, error)) finish(r, error);
      return;
    }
    if (starved) {
      r->retried = true;
      job_waiters_.push_back(r);
      return;
    }
  }
  if (waiting_on) {
    park_on_chunk(r, *waiting_on);
    return;
  }
  if (!changes_origin) {
    finish(r, Status::ok());  // zeroing what reads as zeros already
    return;
  }
  IoOp::Kind kind = r->io.op == IoRequest::Op::kWrite        ? IoOp::Kind::kWrite
                    : r->io.op == IoRequest::Op::kWriteZeroes ? IoOp::Kind::kWriteZeroes
                                                              : IoOp::Kind::kDiscard;
  add_op(r->ops, kind, &origin_, r->io.offset, r->io.buf, r->io.length, r->io.fua);
  r->is_write = true;
  issue(r);
}

bool EngineCore::origin_chunk_is_hole(uint64_t c) {
  auto hole = origin_.is_hole(c * chunk_size_, chunk_bytes_on_origin(c));
  return hole.is_ok() && *hole;
}

void EngineCore::process_snapshot_read(Request* r) {
  const SnapshotInfo& s = *r->volume->snapshot();
  ChunkSpan span = span_of(r->io.offset, r->io.length, chunk_size_);
  std::vector<std::pair<uint64_t, ChunkMapping>> maps;
  for (uint64_t c = span.first; c <= span.last; ++c) {
    const CopyJob* job = conflicting_job(c, s);
    if (job && !job->poisoned) {
      park_on_chunk(r, c);
      return;
    }
    ChunkMapping m;
    if (job) {
      // The copy failed, so its remap is bogus; the data is still where the
      // copy came from (nothing changes after a failure).
      m.kind = job->source == CopyPlan::Source::kOrigin  ? ChunkMapping::Kind::kOrigin
               : job->source == CopyPlan::Source::kStore ? ChunkMapping::Kind::kStore
                                                         : ChunkMapping::Kind::kZero;
      m.store_chunk = job->source_chunk;
    } else {
      auto found = store_->lookup(c, s, false);
      if (!found.is_ok()) return finish(r, found.status());
      m = *found;
    }
    maps.emplace_back(c, m);
  }
  // Where this snapshot's chunks are in the store (or zeroed), the next
  // reads of them may skip the engine (read_map.h). Not while a copy job is
  // on the chunk: its mapping may not hold the data yet.
  if (read_map_.enabled() && store_failure().is_ok())
    for (auto& [c, m] : maps) {
      if (m.kind == ChunkMapping::Kind::kOrigin) continue;
      if (auto it = chunks_.find(c); it != chunks_.end() && !it->second.jobs.empty()) continue;
      read_map_.insert(s.id, c, m.kind == ChunkMapping::Kind::kZero ? ReadMap::kZeros : m.store_chunk);
    }
  const Layout& l = store_->layout();
  std::vector<uint64_t> from_origin, from_store;
  for (auto& [c, m] : maps) {
    auto [lo, len] = part_in_chunk(r->io.offset, r->io.length, c, chunk_size_);
    uint8_t* dst = r->io.buf + (lo - r->io.offset);
    switch (m.kind) {
      case ChunkMapping::Kind::kOrigin:
        from_origin.push_back(c);
        add_op(r->ops, IoOp::Kind::kRead, &origin_, lo, dst, len, false);
        break;
      case ChunkMapping::Kind::kStore:
        from_store.push_back(c);
        add_op(r->ops, IoOp::Kind::kRead, &store_dev_, l.data_offset(m.store_chunk) + (lo - c * chunk_size_),
               dst, len, false);
        break;
      case ChunkMapping::Kind::kZero: std::memset(dst, 0, len); break;
    }
  }
  // Origin writes to these chunks wait until the reads are done (E2), and
  // so does zeroing a chunk being read from the store (E6).
  for (uint64_t c : from_origin) ++chunk(c).origin_readers;
  r->origin_read_chunks = std::move(from_origin);
  register_store_io(r, std::move(from_store));
  issue(r);
}

void EngineCore::process_snapshot_write(Request* r) {
  const SnapshotInfo& s = *r->volume->snapshot();
  if (rollback_target_.load() == s.id)
    return finish(r, make_error(Code::kReadOnly, "snapshot {} is read-only while the origin is rolled back to it", s.id));
  // A snapshot written to is no longer what was sent from it: it is marked
  // (durably, before the write) so that it is refused as a replication base.
  if (!(s.flags & kSnapshotWritten) && !written_.count(s.id)) {
    auto changed = store_->mark_written(s.id);
    if (!changed.is_ok()) return finish(r, changed.status());
    if (written_.size() >= 4096) written_.clear();  // bounded; a miss only costs a lookup
    written_.insert(s.id);
    if (*changed) {
      r->retried = true;
      commit_waiters_.push_back(r);
      return;
    }
  }
  ChunkSpan span = span_of(r->io.offset, r->io.length, chunk_size_);
  for (uint64_t c = span.first; c <= span.last; ++c)
    if (wait_for_conflicts(r, c)) return;
  const bool zeroing = r->io.op != IoRequest::Op::kWrite;
  const Layout& l = store_->layout();
  std::optional<uint64_t> waiting_on;
  std::vector<std::pair<uint64_t, ChunkMapping>> ready;
  for (uint64_t c = span.first; c <= span.last; ++c) {
    auto [lo, len] = part_in_chunk(r->io.offset, r->io.length, c, chunk_size_);
    bool whole = lo == c * chunk_size_ && len == chunk_bytes_on_origin(c);
    if (zeroing && whole) {
      // A whole chunk trimmed or zeroed: S's mapping becomes a zero entry.
      auto m = store_->lookup(c, s, false);
      if (!m.is_ok()) return finish(r, m.status());
      if (m->kind == ChunkMapping::Kind::kZero) continue;  // reads zeros already (shared or not)
      if (auto it = chunks_.find(c); it != chunks_.end() && it->second.store_io > 0) {
        park_on_chunk(r, c);  // E6: the chunk may be freed; let its I/O finish first
        return;
      }
      if (!can_start_job(1)) {
        r->retried = true;
        job_waiters_.push_back(r);
        return;
      }
      read_map_.forget_chunk(c);  // the mappings of c may change (read_map.h)
      auto plan = store_->zero_chunk(c, s);
      if (!plan.is_ok()) {
        if (!wait_for_space(r, plan.status())) finish(r, plan.status());
        return;
      }
      start_job(c, *plan);
      waiting_on = c;
      continue;
    }
    if (zeroing && r->io.op == IoRequest::Op::kTrim) continue;  // part of a chunk: a no-op
    ChunkMapping m;
    switch (prepare_writable(r, c, &m)) {
      case Prep::kReady: ready.emplace_back(c, m); break;
      case Prep::kStarted: waiting_on = c; break;
      case Prep::kParked: return;
      case Prep::kFailed: return;
    }
  }
  if (waiting_on) {
    park_on_chunk(r, *waiting_on);
    return;
  }
  std::vector<uint64_t> touched;
  for (auto& [c, m] : ready) {
    auto [lo, len] = part_in_chunk(r->io.offset, r->io.length, c, chunk_size_);
    uint64_t dev_off = l.data_offset(m.store_chunk) + (lo - c * chunk_size_);
    if (zeroing) add_op(r->ops, IoOp::Kind::kWriteZeroes, &store_dev_, dev_off, nullptr, len, r->io.fua);
    else add_op(r->ops, IoOp::Kind::kWrite, &store_dev_, dev_off, r->io.buf + (lo - r->io.offset), len, r->io.fua);
    touched.push_back(c);
  }
  r->is_write = true;
  if (r->ops.empty()) {
    finish(r, Status::ok());  // nothing left to write: only zero entries, now committed
    return;
  }
  register_store_io(r, std::move(touched));
  issue(r);
}

void EngineCore::process_flush(Request* r) {
  if (!store_failure().is_ok()) {
    finish(r, Status(Code::kFailed, "the store failed and must be reopened: " + store_failure().to_string()));
    return;
  }
  if (jobs_in_flight_ > 0 || !jobs_done_.empty() || store_->has_changes()) {
    commit_waiters_.push_back(r);  // retried after the next commit
    return;
  }
  for (BlockDevice* dev : {&origin_, &store_dev_}) {
    IoOp op;
    op.kind = IoOp::Kind::kFlush;
    op.dev = dev;
    r->ops.push_back(std::move(op));
  }
  issue(r);
}

void EngineCore::process_block_status(Request* r) {
  std::vector<AllocationExtent> out;
  const SnapshotInfo& s = *r->volume->snapshot();
  ChunkSpan span = span_of(r->io.offset, r->io.length, chunk_size_);
  auto push = [&](uint64_t len, bool hole, bool zero) {
    if (!out.empty() && out.back().hole == hole && out.back().zero == zero) out.back().length += len;
    else out.push_back({len, hole, zero});
  };
  for (uint64_t c = span.first; c <= span.last; ++c) {
    auto m = store_->lookup(c, s, false);
    if (!m.is_ok()) {
      r->extents_done(m.status());
      finish(r, Status::ok());
      return;
    }
    auto [lo, len] = part_in_chunk(r->io.offset, r->io.length, c, chunk_size_);
    if (m->kind == ChunkMapping::Kind::kZero) {
      push(len, true, true);
    } else if (m->kind == ChunkMapping::Kind::kStore) {
      push(len, false, false);
    } else {
      auto a = origin_.allocation(lo, len);
      if (!a.is_ok()) push(len, false, false);
      else
        for (auto& e : *a) push(e.length, e.hole, e.hole);
    }
  }
  r->extents_done(std::move(out));
  finish(r, Status::ok());
}

void EngineCore::register_store_io(Request* r, std::vector<uint64_t> chunks) {
  for (uint64_t c : chunks) ++chunk(c).store_io;
  r->store_io_chunks = std::move(chunks);
}

void EngineCore::issue(Request* r) {
  r->pending = static_cast<uint32_t>(r->ops.size());
  if (r->is_write) ++writes_in_flight_;
  if (r->pending == 0) {
    op_done(r, Status::ok());
    return;
  }
  // A small whole-page origin write (a request has at most one) is made
  // here and now (EngineOptions::inline_origin_write_max), after the rest
  // is submitted; completing it may delete r.
  IoOp* inline_op = nullptr;
  for (IoOp& op : r->ops) {
    op.done = [this, r](Status s) { op_done(r, std::move(s)); };
    if (!inline_op && op.dev == &origin_ && op.kind == IoOp::Kind::kWrite && !op.fua &&
        op.len <= options_.inline_origin_write_max && op.offset % 4096 == 0 && op.len % 4096 == 0) {
      inline_op = &op;
      continue;
    }
    io_->submit(&op);
  }
  if (!inline_op) return;
  // I/O that earlier requests queued goes to the device first: the write
  // below may hold this thread for a while.
  io_->kick();
  AtomicCounters::add(counters_.origin_writes_inline);
  Status s = execute_sync(*inline_op);
  complete(inline_op, std::move(s));
}

void EngineCore::op_done(Request* r, Status s) {
  if (!s.is_ok() && r->status.is_ok()) r->status = std::move(s);
  if (r->pending > 0 && --r->pending > 0) return;
  for (uint64_t c : r->origin_read_chunks) {
    ChunkState& cs = chunk(c);
    if (--cs.origin_readers == 0) release(cs.waiters);
    tidy_chunk(c);
  }
  r->origin_read_chunks.clear();
  for (uint64_t c : r->store_io_chunks) {
    ChunkState& cs = chunk(c);
    if (--cs.store_io == 0) release(cs.waiters);
    tidy_chunk(c);
  }
  r->store_io_chunks.clear();
  if (r->is_write) --writes_in_flight_;
  finish(r, r->status);
}

void EngineCore::finish(Request* r, Status s) {
  if (!s.is_ok()) AtomicCounters::add(counters_.errors);
  switch (r->io.op) {
    case IoRequest::Op::kRead:
      AtomicCounters::add(counters_.reads);
      if (s.is_ok()) AtomicCounters::add(counters_.bytes_read, r->io.length);
      break;
    case IoRequest::Op::kWrite:
      AtomicCounters::add(counters_.writes);
      if (s.is_ok()) AtomicCounters::add(counters_.bytes_written, r->io.length);
      break;
    case IoRequest::Op::kFlush: AtomicCounters::add(counters_.flushes); break;
    case IoRequest::Op::kTrim: AtomicCounters::add(counters_.trims); break;
    case IoRequest::Op::kWriteZeroes: AtomicCounters::add(counters_.zeroes); break;
    case IoRequest::Op::kCache: break;
  }
  if (r->done) r->done(std::move(s));
  delete r;
  --outstanding_;
}

}  // namespace multisnap
