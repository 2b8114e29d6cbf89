#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include <fmt/ranges.h>

#include "engine/core.h"
#include "util/clock.h"
#include "util/endian.h"
#include "util/log.h"

namespace multisnap {

namespace {
bool all_digits(std::string_view s) {
  return !s.empty() && s.size() <= 10 && s.find_first_not_of("0123456789") == std::string_view::npos;
}
}  // namespace

Volume::~Volume() {
  if (registry_) registry_->closed(*this);
}

Engine::Engine(std::unique_ptr<EngineCore> core) : core_(std::move(core)) {}
Engine::~Engine() { core_->shutdown(); }

Result<std::unique_ptr<Engine>> Engine::open(BlockDevice& origin, BlockDevice& store,
                                             const EngineOptions& options) {
  return open(origin, store, options, make_default_io_context());
}

Result<std::unique_ptr<Engine>> Engine::open(BlockDevice& origin, BlockDevice& store, const EngineOptions& options,
                                             std::unique_ptr<IoContext> io) {
  if (!io) return make_error(Code::kInvalidArgument, "Engine::open needs an I/O context");
  TmOptions tmo;
  tmo.cache_bytes = options.cache_bytes;
  tmo.use_older_commit = options.use_older_commit;
  MS_ASSIGN_OR_RETURN(auto st, open_store(store, tmo));
  for (const CommitRecordFinding& f : st->commit_findings()) {
    if (f.serious) MS_LOG_ERROR("{}: {}", store.describe(), f.text);
    else MS_LOG_WARN("{}: {}", store.describe(), f.text);
  }
  if (!st->commit_findings().empty()) {
    MS_ASSIGN_OR_RETURN(int repaired, st->repair_commit_copies());
    if (repaired > 0) MS_LOG_WARN("{}: rewrote {} damaged copy(ies) of the newest commit record", store.describe(), repaired);
  }
  const Layout& l = st->layout();
  if (origin.size() < l.origin_size)
    return make_error(Code::kInvalidArgument,
                      "the origin {} has {} bytes but the store was created for {} bytes", origin.describe(),
                      origin.size(), l.origin_size);
  auto core = std::make_unique<EngineCore>(origin, store, std::move(st), std::move(io), options);
  // A rollback that a crash or a stop interrupted carries on from its position.
  MS_ASSIGN_OR_RETURN(auto position, core->store().get_property(kRollbackProperty));
  if (position && position->size() == 12) {
    SnapshotId target = load_le<uint32_t>(position->data());
    uint64_t next = load_le<uint64_t>(position->data() + 4);
    MS_ASSIGN_OR_RETURN(auto snap, core->store().find_snapshot(target));
    if (!snap) return make_error(Code::kCorruption, "a rollback to snapshot {} is recorded, but it does not exist", target);
    MS_TRY(core->start_rollback(*snap, next));
    MS_LOG_INFO("resuming the rollback to snapshot {} at chunk {}", target, next);
  }
  if (options.threaded) core->start_thread();
  return std::unique_ptr<Engine>(new Engine(std::move(core)));
}

const Layout& Engine::layout() const { return core_->store().layout(); }

Result<VolumeRef> Engine::open_volume(std::string_view name) { return core_->open_volume(name); }

void Engine::submit(const VolumeRef& volume, const IoRequest& request, IoDone done) {
  core_->submit(volume, request, std::move(done));
}

void Engine::block_status(const VolumeRef& volume, uint64_t offset, uint64_t length, ExtentsDone done) {
  core_->block_status(volume, offset, length, std::move(done));
}

Result<SnapshotInfo> Engine::create_snapshot(std::optional<SnapshotId> of, std::string name,
                                             std::optional<Uuid> uuid) {
  return create_snapshot_with(of, std::move(name), uuid, nullptr);
}

Result<SnapshotInfo> Engine::create_snapshot_with(std::optional<SnapshotId> of, std::string name,
                                                  std::optional<Uuid> uuid,
                                                  const std::function<void(ExceptionStore&)>& also) {
  Result<SnapshotInfo> result = Status(Code::kShutdown, "not run");
  core_->run_control(true, [&] {
    // Quiesced: no write in flight, and no direct write either once the
    // gate is shut (the new snapshot makes every chunk need a copy again).
    // Make every acknowledged origin write durable so the snapshot holds
    // them after a crash too.
    core_->close_gate();
    struct Reopen {
      EngineCore* core;
      ~Reopen() { core->open_gate(); }
    } reopen{core_.get()};
    Status s = core_->origin().flush();
    if (!s.is_ok()) {
      result = s.annotate("flushing the origin before the snapshot");
      return;
    }
    if (!of && core_->rolling_back_to() != 0) {
      result = make_error(Code::kBusy, "the origin is being rolled back to snapshot {}; snapshot it when that is done",
                          core_->rolling_back_to());
      return;
    }
    result = core_->store().create_snapshot(of, name, wall_clock_ns(), uuid);
    if (!result.is_ok()) return;
    if (also) also(core_->store());  // in the same commit
    s = core_->commit_now();
    if (!s.is_ok()) result = s;
  });
  if (result.is_ok()) MS_LOG_INFO("created snapshot {}", result->id);
  return result;
}

Status Engine::delete_snapshot(SnapshotId id) { return delete_snapshots({id}); }

Status Engine::delete_snapshots(const std::vector<SnapshotId>& ids) {
  if (ids.empty()) return make_error(Code::kInvalidArgument, "no snapshot to delete");
  std::vector<SnapshotId> sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  if (auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end())
    return make_error(Code::kInvalidArgument, "snapshot {} is named twice", *dup);
  Status result, commit_status;
  size_t deleted = 0;
  // Deletes queued together share one commit (ControlOp::committed); so do
  // the snapshots of one call.
  core_->run_control_committed(
      [&] {
        // Everything that could refuse is checked before anything changes.
        for (SnapshotId id : ids) {
          if (core_->open_count(id) > 0) {
            result = make_error(Code::kBusy, "snapshot {} is in use ({} open)", id, core_->open_count(id));
            return;
          }
          auto found = core_->store().find_snapshot(id);
          if (!found.is_ok() || !*found) {
            result = found.is_ok() ? make_error(Code::kNotFound, "there is no snapshot {}", id) : found.status();
            return;
          }
        }
        for (SnapshotId id : ids) {
          // Only an I/O error (the store fails: nothing is committed) or
          // an exhausted delete reserve can stop this part; then the ones
          // deleted before it are committed all the same, and the error
          // names them.
          result = core_->store().delete_snapshot(id);
          if (!result.is_ok()) return;
          core_->forget_snapshot(id);
          ++deleted;
        }
      },
      [&](Status committed) {
        commit_status = committed;
        if (result.is_ok()) result = std::move(committed);
      });
  if (result.is_ok()) {
    if (ids.size() == 1)
      MS_LOG_INFO("deleted snapshot {}; its space is reclaimed in the background", ids[0]);
    else
      MS_LOG_INFO("deleted {} snapshots ({} to {}) in one commit; their space is reclaimed in the background",
                  ids.size(), sorted.front(), sorted.back());
  } else if (deleted > 0) {
    if (commit_status.is_ok())
      result = result.annotate(fmt::format("snapshot{} {} deleted before it (committed)", deleted == 1 ? "" : "s",
                                           fmt::join(ids.begin(), ids.begin() + static_cast<long>(deleted), ", ")));
    else
      result = result.annotate("none of the snapshots was deleted");
  }
  return result;
}

Result<std::optional<SnapshotInfo>> Engine::find_snapshot(std::string_view id_or_name) {
  Result<std::optional<SnapshotInfo>> result = std::optional<SnapshotInfo>();
  std::string key(id_or_name);
  core_->run_control(false, [&] {
    if (all_digits(key)) {
      uint64_t id = std::stoull(key);
      if (id <= UINT32_MAX) result = core_->store().find_snapshot(static_cast<SnapshotId>(id));
    } else {
      result = core_->store().find_snapshot(std::string_view(key));
    }
  });
  return result;
}

Result<std::vector<SnapshotInfo>> Engine::list_snapshots(SnapshotId from, size_t limit) {
  std::vector<SnapshotInfo> out;
  Status s;
  core_->run_control(false, [&] {
    s = core_->store().list_snapshots(from, [&](const SnapshotInfo& info) {
      out.push_back(info);
      return out.size() < limit;
    });
  });
  if (!s.is_ok()) return s;
  return out;
}

EngineStatus Engine::status() {
  EngineStatus st;
  core_->run_control(false, [&] {
    st.store = core_->store().stats();
    CacheStats c = core_->store().cache_stats();
    st.cache_hits = c.hits;
    st.cache_misses = c.misses;
    st.cache_blocks = c.blocks;
    st.cache_capacity_blocks = c.capacity_blocks;
    const Status& failure = core_->store_failure();
    if (!failure.is_ok()) st.failure = failure.to_string();
  });
  st.counters = core_->counters();
  st.rollback = core_->rollback_status();
  st.space_scan = core_->space_scans().status();
  st.requests_in_flight = core_->requests_in_flight();
  st.open_volumes = core_->open_volumes();
  return st;
}

Status Engine::sync() {
  Status result;
  core_->run_control(true, [&] {
    result = core_->commit_now();
    if (result.is_ok()) result = core_->origin().flush();
    if (result.is_ok()) result = core_->store_device().flush();
  });
  return result;
}

void Engine::poll() { core_->poll(); }
void Engine::run_until_idle() { core_->run_until_idle(); }

}  // namespace multisnap
