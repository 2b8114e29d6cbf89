#include "daemon/replication.h"

#include <condition_variable>
#include <deque>
#include <future>
#include <thread>

#include "stream/reader.h"
#include "stream/writer.h"
#include "util/clock.h"
#include "util/log.h"

namespace multisnap {

using control::Json;

namespace {

constexpr uint32_t kIoSize = 1u << 20;          // one read or write request
constexpr size_t kReadsInFlight = 16;           // send: requests kept in flight
constexpr uint64_t kWriteBytesInFlight = 32u << 20;  // receive
constexpr size_t kChangedPage = 4096;           // chunks per metadata query
constexpr std::chrono::seconds kWaitForReceive{10};

// Takes `mu` within kWaitForReceive, or returns a lock that does not own it.
// It polls try_lock instead of using std::timed_mutex::try_lock_for: that
// calls pthread_mutex_clocklock, which GCC 12's ThreadSanitizer does not
// intercept, so TSan missed the lock and reported its unlock as a misuse
// (and would miss the ordering the lock provides). Waiting a receive out
// 10 ms late costs nothing.
std::unique_lock<std::mutex> lock_receive(std::mutex& mu) {
  std::unique_lock lock(mu, std::try_to_lock);
  auto deadline = std::chrono::steady_clock::now() + kWaitForReceive;
  while (!lock.owns_lock() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    (void)lock.try_lock();
  }
  return lock;
}

// Engine requests from a control thread: submitted asynchronously, waited
// for in submission order, at most `window` in flight. The destructor waits
// for everything still in flight (their buffers live here).
class Pipeline {
 public:
  struct Op {
    uint64_t offset = 0;
    std::vector<uint8_t> buf;
    size_t at = 0;  // the data's start in buf
    uint64_t length = 0;
    bool done = false;
    Status status;
  };

  Pipeline(Engine& engine, VolumeRef volume, size_t window, uint64_t byte_window)
      : engine_(engine), volume_(std::move(volume)), window_(window), byte_window_(byte_window) {}
  ~Pipeline() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return in_flight_ == 0; });
  }

  // Submits; first waits for (and hands to `done`) the oldest while full.
  // `at`: where in buf the request's bytes start (writes).
  Status submit(IoRequest::Op op, uint64_t offset, uint64_t length, std::vector<uint8_t> buf,
                const std::function<Status(Op&)>& done, size_t at = 0) {
    while (!ops_.empty() && (ops_.size() >= window_ || bytes_ + length > byte_window_)) MS_TRY(pop(done));
    auto op_ptr = std::make_unique<Op>();
    Op* o = op_ptr.get();
    o->offset = offset;
    o->length = length;
    o->buf = std::move(buf);
    if (op == IoRequest::Op::kRead) o->buf.resize(length);
    ops_.push_back(std::move(op_ptr));
    bytes_ += length;
    {
      std::lock_guard lock(mu_);
      ++in_flight_;
    }
    o->at = at;
    IoRequest r{op, offset, length, o->buf.empty() ? nullptr : o->buf.data() + at, false};
    engine_.submit(volume_, r, [this, o](Status s) {
      std::lock_guard lock(mu_);
      o->status = std::move(s);
      o->done = true;
      --in_flight_;
      cv_.notify_all();
    });
    return Status::ok();
  }

  Status drain(const std::function<Status(Op&)>& done) {
    while (!ops_.empty()) MS_TRY(pop(done));
    return Status::ok();
  }

 private:
  Status pop(const std::function<Status(Op&)>& done) {
    Op* o = ops_.front().get();
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return o->done; });
    }
    Status s = o->status.is_ok() && done ? done(*o) : o->status;
    bytes_ -= o->length;
    ops_.pop_front();
    return s;
  }

  Engine& engine_;
  VolumeRef volume_;
  size_t window_;
  uint64_t byte_window_;
  std::deque<std::unique_ptr<Op>> ops_;
  uint64_t bytes_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t in_flight_ = 0;  // guarded by mu_
};

Result<std::vector<AllocationExtent>> block_status(Engine& engine, const VolumeRef& v, uint64_t off, uint64_t len) {
  std::promise<Result<std::vector<AllocationExtent>>> p;
  auto f = p.get_future();
  engine.block_status(v, off, len, [&p](Result<std::vector<AllocationExtent>> r) { p.set_value(std::move(r)); });
  return f.get();
}

// Emits [offset, offset+len) chunk by chunk: runs of zero chunks as ZERO
// records, runs of data as DATA records.
Status emit(stream::StreamWriter& w, uint64_t offset, const uint8_t* buf, uint64_t len, uint32_t grain) {
  uint64_t run_start = 0;
  int run_kind = -1;  // 0 zero, 1 data
  auto flush_run = [&](uint64_t end) -> Status {
    if (run_kind < 0 || end == run_start) return Status::ok();
    if (run_kind == 0) return w.zero(offset + run_start, end - run_start);
    return w.data(offset + run_start, buf + run_start, static_cast<uint32_t>(end - run_start));
  };
  for (uint64_t pos = 0; pos < len;) {
    uint64_t n = std::min<uint64_t>(grain - (offset + pos) % grain, len - pos);
    int kind = stream::all_zero(buf + pos, n) ? 0 : 1;
    if (kind != run_kind) {
      MS_TRY(flush_run(pos));
      run_start = pos;
      run_kind = kind;
    }
    pos += n;
  }
  return flush_run(len);
}

std::string snapshot_words(const SnapshotInfo& s) {
  return s.name.empty() ? fmt::format("snapshot {}", s.id) : fmt::format("snapshot {} '{}'", s.id, s.name);
}

}  // namespace

void append_snapshot_json(std::string& out, const SnapshotInfo& s, std::string_view parent_name,
                          const SnapshotSpaceBytes* space) {
  auto number = [&out](uint64_t n) { control::append_json_number(out, n); };
  auto string_or_null = [&out](std::string_view text) {
    if (text.empty()) out += "null";
    else control::append_json_string(out, text);
  };
  // Keys in nlohmann's order (std::map: sorted), as to_text printed them.
  out += "{\"created\":";
  control::append_json_string(out, iso8601(s.created_ns));
  if (space) {
    out += ",\"exclusive_bytes\":";
    number(space->exclusive);
  }
  out += ",\"export\":\"snapshot/";
  number(s.id);
  out += "\",\"id\":";
  number(s.id);
  out += ",\"name\":";
  string_or_null(s.name);
  out += ",\"of\":";
  if (s.parent == kOriginId) {
    out += "null";
  } else {
    out += "{\"id\":";
    number(s.parent);
    out += ",\"name\":";
    string_or_null(parent_name);
    out += '}';
  }
  if (space) {
    out += ",\"shared_bytes\":";
    number(space->shared);
  }
  out += ",\"uuid\":";
  control::append_json_string(out, s.uuid.to_string());
  out += (s.flags & kSnapshotWritten) ? ",\"written\":true}" : ",\"written\":false}";
}

Json snapshot_json(const SnapshotInfo& s, std::string_view parent_name) {
  std::string text;
  append_snapshot_json(text, s, parent_name);
  return Json::parse(text);
}

std::string parent_name(Engine& engine, const SnapshotInfo& s) {
  if (s.parent == kOriginId) return {};
  auto parent = engine.find_snapshot(std::to_string(s.parent));
  return parent.is_ok() && *parent ? (*parent)->name : std::string();
}

Json snapshot_json(Engine& engine, const SnapshotInfo& s) { return snapshot_json(s, parent_name(engine, s)); }

// ---------------------------------------------------------------- send

std::optional<Json> Replication::send(const SnapshotInfo& target, const std::optional<SnapshotInfo>& base,
                                      bool compress, control::Writer& out) {
  const Layout& l = engine_.layout();
  const uint64_t size = l.origin_size;
  const uint32_t chunk = l.chunk_size;
  if (base && base->id == target.id)
    return control::error_answer(make_error(Code::kInvalidArgument, "--from names the snapshot being sent"));
  if (base && (base->flags & kSnapshotWritten))
    return control::error_answer(make_error(
        Code::kInvalidArgument,
        "{} was written to after it was created, so a receiver's copy of it may differ from it; it cannot be the "
        "base of an incremental stream (send a full stream, or use a base nobody wrote to)",
        snapshot_words(*base)));
  auto vol = engine_.open_volume("snapshot/" + std::to_string(target.id));
  if (!vol.is_ok()) return control::error_answer(vol.status());
  auto state = engine_.replica_state();
  if (!state.is_ok()) return control::error_answer(state.status());

  // What will be sent, for --progress: the changed chunks (a metadata pass)
  // or the whole volume.
  uint64_t total = size;
  const uint64_t last_chunk = l.origin_chunks() - 1;
  if (base) {
    total = 0;
    for (uint64_t from = 0;;) {
      auto page = engine_.changed_chunks(target.id, base->id, from, last_chunk, kChangedPage);
      if (!page.is_ok()) return control::error_answer(page.status());
      for (uint64_t c : *page) total += std::min<uint64_t>(chunk, size - c * chunk);
      if (page->size() < kChangedPage) break;
      from = page->back() + 1;
    }
  }
  if (!out.write(Json{{"ok", true}, {"stream", {{"total_bytes", total}, {"full", !base}}}}.dump() + "\n"))
    return std::nullopt;

  control::FrameWriter frames([&](const void* p, size_t n) {
    return out.write(std::string_view(static_cast<const char*>(p), n));
  });
  stream::StreamWriter w([&](const uint8_t* p, size_t n) { return frames.write(p, n); }, compress);
  auto run = [&]() -> Status {
    stream::Header h;
    h.volume_size = size;
    h.chunk_size = chunk;
    h.source_store = state->store_uuid;
    if (base) {
      h.base = base->uuid;
      h.base_id = base->id;
    }
    h.target = target.uuid;
    h.target_id = target.id;
    h.target_created_ns = target.created_ns;
    h.target_name = target.name;
    MS_TRY(w.header(h));
    Pipeline reads(engine_, *vol, kReadsInFlight, UINT64_MAX);
    auto emit_op = [&](Pipeline::Op& op) { return emit(w, op.offset, op.buf.data(), op.length, chunk); };
    if (base) {
      // Runs of adjacent changed chunks, read in requests of up to kIoSize.
      uint64_t run_start = 0, run_end = 0;  // bytes
      auto read_run = [&]() -> Status {
        for (uint64_t off = run_start; off < run_end;) {
          uint64_t n = std::min<uint64_t>(kIoSize, run_end - off);
          MS_TRY(reads.submit(IoRequest::Op::kRead, off, n, {}, emit_op));
          off += n;
        }
        return Status::ok();
      };
      for (uint64_t from = 0;;) {
        MS_ASSIGN_OR_RETURN(auto page, engine_.changed_chunks(target.id, base->id, from, last_chunk, kChangedPage));
        for (uint64_t c : page) {
          uint64_t lo = c * chunk, hi = std::min<uint64_t>(lo + chunk, size);
          if (lo != run_end) {
            MS_TRY(read_run());
            run_start = lo;
          }
          run_end = hi;
        }
        if (page.size() < kChangedPage) break;
        from = page.back() + 1;
      }
      MS_TRY(read_run());
    } else {
      // Everything: holes and zero extents as ZERO records without reading.
      constexpr uint64_t kStatusWindow = 256ull << 20;
      for (uint64_t off = 0; off < size;) {
        uint64_t len = std::min(kStatusWindow, size - off);
        MS_ASSIGN_OR_RETURN(auto extents, block_status(engine_, *vol, off, len));
        uint64_t pos = off;
        for (const AllocationExtent& e : extents) {
          uint64_t n = std::min(e.length, off + len - pos);
          if (e.zero) {
            MS_TRY(reads.drain(emit_op));
            MS_TRY(w.zero(pos, n));
          } else {
            for (uint64_t p = pos; p < pos + n;) {
              uint64_t m = std::min<uint64_t>(kIoSize - p % kIoSize, pos + n - p);
              MS_TRY(reads.submit(IoRequest::Op::kRead, p, m, {}, emit_op));
              p += m;
            }
          }
          pos += n;
        }
        if (pos != off + len) return make_error(Code::kIoError, "block status did not cover [{}, {})", pos, off + len);
        off += len;
      }
    }
    MS_TRY(reads.drain(emit_op));
    MS_TRY(w.finish());
    return frames.end();
  };
  Status s = run();
  if (!s.is_ok()) {
    MS_LOG_WARN("send of {} failed: {}", snapshot_words(target), s.to_string());
    frames.end().ignore();
    return control::error_answer(s);
  }
  return Json{{"ok", true},
              {"bytes", w.bytes_written()},
              {"data_bytes", w.data_bytes()},
              {"zero_bytes", w.zero_bytes()},
              {"snapshot", snapshot_json(engine_, target)}};
}

// ---------------------------------------------------------------- receive

Status Replication::may_delete(SnapshotId id) {
  MS_ASSIGN_OR_RETURN(auto st, engine_.replica_state());
  if (st.pending.active() && st.pending.base == id)
    return make_error(Code::kBusy,
                      "snapshot {} is the base of a pending receive; finish it (run the same receive again) or "
                      "`multisnap receive --abort` first",
                      id);
  return Status::ok();
}

Status Replication::undo_pending() {
  MS_ASSIGN_OR_RETURN(auto st, engine_.replica_state());
  if (!st.pending.active()) return Status::ok();
  if (st.pending.base != kOriginId) {
    // The origin differs from the base only where the receive wrote: copy
    // the base's data back there (the base already holds it, so this copies
    // nothing more into the store).
    const SnapshotId base = st.pending.base;
    MS_ASSIGN_OR_RETURN(VolumeRef bvol, engine_.open_volume("snapshot/" + std::to_string(base)));
    MS_ASSIGN_OR_RETURN(VolumeRef ovol, engine_.open_volume("origin"));
    const Layout& l = engine_.layout();
    Pipeline writes(engine_, ovol, kReadsInFlight, kWriteBytesInFlight);
    Pipeline reads(engine_, bvol, kReadsInFlight, UINT64_MAX);
    auto copy_back = [&](Pipeline::Op& op) {
      return writes.submit(IoRequest::Op::kWrite, op.offset, op.length, std::move(op.buf), nullptr);
    };
    for (uint64_t from = 0;;) {
      MS_ASSIGN_OR_RETURN(auto page,
                          engine_.changed_chunks(base, std::nullopt, from, l.origin_chunks() - 1, kChangedPage));
      for (uint64_t c : page) {
        uint64_t lo = c * l.chunk_size, n = std::min<uint64_t>(l.chunk_size, l.origin_size - lo);
        MS_TRY(reads.submit(IoRequest::Op::kRead, lo, n, {}, copy_back));
      }
      if (page.size() < kChangedPage) break;
      from = page.back() + 1;
    }
    MS_TRY(reads.drain(copy_back));
    MS_TRY(writes.drain(nullptr));
  }
  MS_TRY(engine_.sync());  // the restored origin is durable before the receive ends
  return engine_.end_receive(true);
}

Json Replication::receive_abort() {
  std::unique_lock lock = lock_receive(receive_mu_);
  if (!lock.owns_lock())
    return control::error_answer(make_error(Code::kBusy, "a receive is running; stop it first"));
  auto st = engine_.replica_state();
  if (!st.is_ok()) return control::error_answer(st.status());
  if (!st->pending.active()) return Json{{"ok", true}, {"aborted", false}};
  Status s = undo_pending();
  if (!s.is_ok()) return control::error_answer(s.annotate("undoing the pending receive"));
  MS_LOG_INFO("aborted the pending receive of {}", st->pending.target.to_string());
  return Json{{"ok", true}, {"aborted", true}, {"uuid", st->pending.target.to_string()}};
}

std::optional<Json> Replication::receive(const std::string& name_override, control::Writer& out) {
  std::unique_lock lock = lock_receive(receive_mu_);
  if (!lock.owns_lock())
    return control::error_answer(make_error(Code::kBusy, "another receive is running on this store"));
  if (!out.write(Json{{"ok", true}, {"ready", true}}.dump() + "\n")) return std::nullopt;
  control::FrameReader frames([&](void* p, size_t n) { return out.read_raw(p, n); });
  stream::StreamReader reader([&](uint8_t* buf, size_t len) { return frames.read(buf, len); });
  // Refused before anything changed: read the rest of the input, then say why.
  auto refuse = [&](Status why) -> std::optional<Json> {
    if (why.code() == Code::kShutdown) return std::nullopt;  // nobody to answer
    if (Status d = frames.drain(); !d.is_ok()) return std::nullopt;
    return control::error_answer(why);
  };

  auto header = reader.header();
  if (!header.is_ok()) return refuse(header.status());
  const stream::Header& h = *header;
  auto st = engine_.replica_state(&h.target);
  if (!st.is_ok()) return refuse(st.status());
  const Layout& l = engine_.layout();
  if (h.volume_size != l.origin_size)
    return refuse(make_error(Code::kInvalidArgument, "the stream is of a {}-byte volume, but this store's are {} bytes",
                             h.volume_size, l.origin_size));
  const PendingReceive& pending = st->pending;
  const bool resuming = pending.active() && pending.target == h.target;
  if (pending.active() && !resuming)
    return refuse(make_error(Code::kBusy,
                             "a receive of snapshot {} is pending here; finish it (run that receive again) or "
                             "`multisnap receive --abort` first",
                             pending.target.to_string()));
  if (st->with_uuid)
    return refuse(make_error(Code::kExists, "this store already has the stream's snapshot ({}, uuid {})",
                             snapshot_words(*st->with_uuid), h.target.to_string()));
  SnapshotId base_id = kOriginId;
  if (h.full()) {
    if (st->snapshots > 0 && !resuming)
      return refuse(make_error(Code::kInvalidArgument,
                               "a full stream is received only into a store without snapshots (this one has {}); "
                               "send an incremental stream (--from) instead",
                               st->snapshots));
  } else {
    const std::string base_words =
        fmt::format("the stream's base (the sender's snapshot {}, uuid {})", h.base_id, h.base.to_string());
    if (!st->newest || st->newest->uuid != h.base) {
      auto with_base = engine_.replica_state(&h.base);
      if (with_base.is_ok() && with_base->with_uuid)
        return refuse(make_error(Code::kInvalidArgument, "{} is {} here, but it is not the newest snapshot ({} is)",
                                 base_words, snapshot_words(*with_base->with_uuid),
                                 st->newest ? snapshot_words(*st->newest) : "none"));
      return refuse(make_error(Code::kNotFound, "this store does not have {}", base_words));
    }
    base_id = st->newest->id;
    if (!resuming && st->origin_changed_at >= base_id)
      return refuse(make_error(Code::kInvalidArgument,
                               "the origin has been written since {} (the stream's base) was taken, so the stream "
                               "cannot be applied to it",
                               snapshot_words(*st->newest)));
  }
  const std::string name = name_override.empty() ? h.target_name : name_override;
  if (!name.empty()) {
    if (Status v = validate_snapshot_name(name); !v.is_ok()) return refuse(v);
    auto taken = engine_.find_snapshot(name);
    if (!taken.is_ok()) return refuse(taken.status());
    if (*taken)
      return refuse(make_error(Code::kExists, "a snapshot named '{}' already exists here ({}); give another with --name",
                               name, snapshot_words(**taken)));
  }
  if (!resuming) {
    Status s = engine_.begin_receive({h.target, base_id, st->origin_changed_at});
    if (!s.is_ok()) return refuse(s);
  } else {
    MS_LOG_INFO("resuming the pending receive of {}", h.target.to_string());
  }

  // Apply. From here on a refusal undoes what was written.
  auto origin = engine_.open_volume("origin");
  if (!origin.is_ok()) return refuse(origin.status());
  Status s;
  {
    Pipeline writes(engine_, *origin, SIZE_MAX, kWriteBytesInFlight);
    for (;;) {
      auto item = reader.next();
      if (!item.is_ok()) {
        s = item.status();
        break;
      }
      if (auto* d = std::get_if<stream::DataExtent>(&*item)) {
        // The record's buffer goes with the write (no copy); the data sits
        // at d->data inside it.
        const uint8_t* data = d->data;
        std::vector<uint8_t> buf = reader.take_buffer();  // same allocation: data stays valid
        const size_t at = static_cast<size_t>(data - buf.data());
        s = writes.submit(IoRequest::Op::kWrite, d->offset, d->length, std::move(buf), nullptr, at);
      } else if (auto* z = std::get_if<stream::ZeroExtent>(&*item)) {
        for (uint64_t off = z->offset; off < z->offset + z->length && s.is_ok();) {
          uint64_t n = std::min<uint64_t>(16u << 20, z->offset + z->length - off);
          s = writes.submit(IoRequest::Op::kWriteZeroes, off, n, {}, nullptr);
          off += n;
        }
      } else {
        break;  // END: verified
      }
      if (!s.is_ok()) break;
    }
    Status w = writes.drain(nullptr);
    if (s.is_ok()) s = w;
  }
  if (s.is_ok()) {
    auto snap = engine_.finish_receive(name, h.target);
    if (snap.is_ok()) return Json{{"ok", true}, {"snapshot", snapshot_json(engine_, *snap)}};
    s = snap.status();
  }
  if (s.code() == Code::kShutdown) {
    MS_LOG_WARN("the receive of {} was interrupted ({}); it stays pending: run it again, or `receive --abort`",
                h.target.to_string(), s.to_string());
    return std::nullopt;
  }
  MS_LOG_WARN("receive of {} refused: {}", h.target.to_string(), s.to_string());
  if (Status d = frames.drain(); !d.is_ok()) return std::nullopt;
  if (Status u = undo_pending(); !u.is_ok())
    return control::error_answer(s.annotate(fmt::format(
        "the receive failed, and undoing it failed too ({}); it stays pending: `multisnap receive --abort` retries",
        u.to_string())));
  return control::error_answer(s.annotate("the stream was refused and nothing of it was kept"));
}

}  // namespace multisnap
