#include "daemon/engine_backend.h"

#include <fmt/format.h>

#include "util/clock.h"

namespace multisnap {

namespace {

constexpr std::string_view kChangedPrefix = "multisnap:changed:";
// Changed chunks asked of the engine per BLOCK_STATUS: each becomes at most
// two descriptors, and the server sends at most 1024 per context.
constexpr size_t kMaxChangedChunks = 512;
constexpr uint64_t kMaxExtent = 0x80000000u;  // NBD extents are 32-bit

// The snapshot "multisnap:changed:<BASE>" names, if it is one and BASE exists.
Result<std::optional<SnapshotInfo>> changed_base(Engine& engine, std::string_view context) {
  if (!context.starts_with(kChangedPrefix)) return std::optional<SnapshotInfo>();
  auto found = engine.find_snapshot(context.substr(kChangedPrefix.size()));
  // A malformed name is a snapshot that does not exist.
  if (!found.is_ok() && found.status().code() == Code::kInvalidArgument) {
    return std::optional<SnapshotInfo>();
  }
  return found;
}

void push_extent(std::vector<nbd::ContextExtent>* out, uint64_t length, uint32_t flags) {
  while (length > 0) {
    uint32_t n = static_cast<uint32_t>(std::min(length, kMaxExtent));
    out->push_back({n, flags});
    length -= n;
  }
}

// "multisnap:changed:<BASE>" on one export: flag 1 on the chunks where the
// export and BASE differ (Engine::changed_chunks, from metadata alone).
class ChangedContext final : public nbd::MetaContext {
 public:
  ChangedContext(Engine& engine, const VolumeRef& volume, std::optional<SnapshotId> base,
                 std::string name)
      : engine_(engine),
        target_(volume->snapshot() ? std::optional(volume->snapshot()->id) : std::nullopt),
        size_(volume->size()),
        base_(base),
        name_(std::move(name)) {}

  // Runs the metadata query on the calling (connection) thread: it waits for
  // the engine thread, which must not block in a completion.
  void block_status(uint64_t offset, uint64_t length, nbd::ContextExtentsDone done) override {
    if (!base_) {
      return done(make_error(Code::kNotFound, "{}: the snapshot no longer exists", name_));
    }
    const uint64_t chunk = engine_.layout().chunk_size;
    const uint64_t end = std::min(offset + length, size_);
    auto changed = engine_.changed_chunks(*base_, target_, offset / chunk, (end - 1) / chunk,
                                          kMaxChangedChunks);
    if (!changed.is_ok()) return done(changed.status());
    std::vector<nbd::ContextExtent> out;
    uint64_t pos = offset;
    for (uint64_t c : *changed) {
      uint64_t from = std::max(c * chunk, offset);
      uint64_t to = std::min((c + 1) * chunk, end);
      if (from > pos) push_extent(&out, from - pos, 0);
      push_extent(&out, to - from, 1);
      pos = to;
    }
    // After a full page the state past its last chunk is not known yet:
    // the reply stops there and the client asks again.
    if (changed->size() < kMaxChangedChunks && pos < end) push_extent(&out, end - pos, 0);
    done(std::move(out));
  }

 private:
  Engine& engine_;
  const std::optional<SnapshotId> target_;  // nullopt: the origin
  const uint64_t size_;
  const std::optional<SnapshotId> base_;
  const std::string name_;
};

class EngineExport final : public nbd::Export {
 public:
  EngineExport(Engine& engine, VolumeRef volume, nbd::ExportInfo info, RequestMetrics* metrics)
      : engine_(engine), volume_(std::move(volume)), info_(std::move(info)), metrics_(metrics),
        kind_(volume_->is_origin() ? RequestMetrics::kOrigin : RequestMetrics::kSnapshot) {}

  const nbd::ExportInfo& info() const override { return info_; }

  void read(uint64_t offset, uint32_t length, uint8_t* buf, nbd::Done done) override {
    engine_.submit(volume_, {IoRequest::Op::kRead, offset, length, buf, false},
                   counted(RequestMetrics::kRead, length, std::move(done)));
  }
  void write(uint64_t offset, uint32_t length, const uint8_t* buf, bool fua, nbd::Done done) override {
    engine_.submit(volume_, {IoRequest::Op::kWrite, offset, length, const_cast<uint8_t*>(buf), fua},
                   counted(RequestMetrics::kWrite, length, std::move(done)));
  }
  void flush(nbd::Done done) override {
    engine_.submit(volume_, {IoRequest::Op::kFlush, 0, 0, nullptr, false},
                   counted(RequestMetrics::kFlush, 0, std::move(done)));
  }
  void trim(uint64_t offset, uint64_t length, bool fua, nbd::Done done) override {
    engine_.submit(volume_, {IoRequest::Op::kTrim, offset, length, nullptr, fua},
                   counted(RequestMetrics::kTrim, 0, std::move(done)));
  }
  void write_zeroes(uint64_t offset, uint64_t length, bool fua, bool /*no_hole*/, bool /*fast_zero*/,
                    nbd::Done done) override {
    // Zeroing is never slower than writing zeros here (a hole punch or a
    // zero entry for whole chunks), so FAST_ZERO needs no special case.
    engine_.submit(volume_, {IoRequest::Op::kWriteZeroes, offset, length, nullptr, fua},
                   counted(RequestMetrics::kWriteZeroes, 0, std::move(done)));
  }
  void cache(uint64_t offset, uint64_t length, nbd::Done done) override {
    engine_.submit(volume_, {IoRequest::Op::kCache, offset, length, nullptr, false},
                   counted(RequestMetrics::kCache, 0, std::move(done)));
  }
  void block_status(uint64_t offset, uint64_t length, nbd::ExtentsDone done) override {
    engine_.block_status(volume_, offset, length, [done = std::move(done)](Result<std::vector<AllocationExtent>> r) {
      if (!r.is_ok()) return done(r.status());
      std::vector<nbd::Extent> out;
      for (const AllocationExtent& e : *r) {
        uint64_t left = e.length;
        while (left > 0) {  // NBD extents are 32-bit
          uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(left, 0x80000000u));
          out.push_back({n, e.hole, e.zero});
          left -= n;
        }
      }
      done(std::move(out));
    });
  }

  // BASE is resolved to its ID once, here (IDs are never reused); if it was
  // deleted since SET_META_CONTEXT, the context opens and its requests fail.
  Result<std::unique_ptr<nbd::MetaContext>> open_meta_context(std::string_view name) override {
    if (!name.starts_with(kChangedPrefix)) {
      return make_error(Code::kNotFound, "no meta context '{}'", name);
    }
    MS_ASSIGN_OR_RETURN(auto base, changed_base(engine_, name));
    std::optional<SnapshotId> id = base ? std::optional(base->id) : std::nullopt;
    return std::unique_ptr<nbd::MetaContext>(new ChangedContext(engine_, volume_, id, std::string(name)));
  }

 private:
  // Counted and timed when metrics are on; untouched (no allocation) when off.
  nbd::Done counted(RequestMetrics::Op op, uint64_t bytes, nbd::Done done) {
    return metrics_ ? metrics_->wrap(kind_, op, bytes, std::move(done)) : std::move(done);
  }

  Engine& engine_;
  VolumeRef volume_;
  nbd::ExportInfo info_;
  RequestMetrics* metrics_;
  RequestMetrics::Kind kind_;
};

}  // namespace

std::string EngineBackend::describe(const SnapshotInfo& s) {
  std::string d = "snapshot " + std::to_string(s.id);
  if (!s.name.empty()) d += " '" + s.name + "'";
  d += s.parent == kOriginId ? " of the origin" : " of snapshot " + std::to_string(s.parent);
  return d + ", taken " + iso8601(s.created_ns);
}

nbd::ExportInfo EngineBackend::info_for(const Volume& v, const std::string& description) const {
  nbd::ExportInfo info = template_info();
  info.name = v.name();
  info.description = description;
  info.size = v.size();
  info.read_only = v.read_only();
  return info;
}

nbd::ExportInfo EngineBackend::template_info() const {
  nbd::ExportInfo info;
  info.size = engine_.layout().origin_size;
  // A flush commits and flushes everything, whichever connection sent it.
  info.can_multi_conn = true;
  info.min_block = 1;
  info.preferred_block = 4096;
  info.max_block = 32u << 20;
  return info;
}

void EngineBackend::block_snapshot(SnapshotId id) {
  std::lock_guard lock(mu_);
  ++blocked_[id];  // two deletes of the same snapshot may overlap
}

void EngineBackend::unblock_snapshot(SnapshotId id) {
  std::lock_guard lock(mu_);
  if (auto it = blocked_.find(id); it != blocked_.end() && --it->second == 0) blocked_.erase(it);
}

Result<VolumeRef> EngineBackend::open(std::string_view name) {
  MS_ASSIGN_OR_RETURN(VolumeRef v, engine_.open_volume(name));
  if (v->snapshot()) {
    std::lock_guard lock(mu_);
    if (blocked_.count(v->snapshot()->id))
      return make_error(Code::kNotFound, "snapshot {} is being deleted", v->snapshot()->id);
  }
  return v;
}

Result<std::vector<nbd::ExportInfo>> EngineBackend::list_exports() {
  std::vector<nbd::ExportInfo> out;
  auto origin = engine_.open_volume("origin");
  if (origin.is_ok()) out.push_back(info_for(**origin, "the origin volume (live data)"));
  else if (origin.status().code() != Code::kBusy) return origin.status();  // busy: being rolled back
  // At most list_limit_ snapshots, in ID order: the answer is built in
  // memory, and any client may ask for it (a million snapshots would be
  // about 200 MB per request). Every snapshot can still be opened by name;
  // `multisnap snapshot list` lists them all.
  SnapshotId from = 0;
  size_t listed = 0;
  bool more = false;
  for (;;) {  // in pages, so the engine thread is not held for long
    MS_ASSIGN_OR_RETURN(auto page, engine_.list_snapshots(from, 1024));
    for (const SnapshotInfo& s : page) {
      if (listed == list_limit_) {
        more = true;
        break;
      }
      nbd::ExportInfo info = template_info();
      info.name = "snapshot/" + std::to_string(s.id);
      info.description = describe(s);
      info.read_only = read_only_snapshots_;
      out.push_back(std::move(info));
      ++listed;
    }
    if (more || page.size() < 1024) break;
    from = page.back().id + 1;
  }
  if (more && !out.empty() && out.front().name == "origin")
    out.front().description += fmt::format("; the first {} snapshots are listed, `multisnap snapshot list` shows all",
                                           list_limit_);
  return out;
}

Result<nbd::ExportInfo> EngineBackend::export_info(std::string_view name) {
  MS_ASSIGN_OR_RETURN(VolumeRef v, open(name));
  return info_for(*v, v->snapshot() ? describe(*v->snapshot()) : "the origin volume (live data)");
}

Result<std::vector<std::string>> EngineBackend::meta_contexts(std::string_view /*name*/, std::string_view query,
                                                             nbd::MetaQuery kind) {
  std::vector<std::string> out;
  if (kind == nbd::MetaQuery::kList && (query.empty() || query == "multisnap:" || query == kChangedPrefix)) {
    out.emplace_back(kChangedPrefix);  // the family: one context per snapshot, too many to list
    return out;
  }
  MS_ASSIGN_OR_RETURN(auto base, changed_base(engine_, query));
  if (base) out.emplace_back(query);  // named exactly as asked
  return out;
}

Result<std::unique_ptr<nbd::Export>> EngineBackend::open_export(std::string_view name) {
  MS_ASSIGN_OR_RETURN(VolumeRef v, open(name));
  nbd::ExportInfo info = info_for(*v, v->snapshot() ? describe(*v->snapshot()) : "the origin volume (live data)");
  return std::unique_ptr<nbd::Export>(new EngineExport(engine_, std::move(v), std::move(info), metrics_));
}

}  // namespace multisnap
