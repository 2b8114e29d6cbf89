// The engine's part of replication: metadata queries and the pending-receive
// state, each run on the engine thread.
#include "engine/core.h"
#include "engine/engine.h"
#include "util/clock.h"
#include "util/log.h"

namespace multisnap {

Result<std::vector<uint64_t>> Engine::changed_chunks(SnapshotId a, std::optional<SnapshotId> b, uint64_t first,
                                                     uint64_t last, size_t max) {
  std::vector<uint64_t> out;
  Status result;
  core_->run_control(false, [&] {
    ExceptionStore& st = core_->store();
    auto sa = st.find_snapshot(a);
    if (!sa.is_ok() || !*sa) {
      result = sa.is_ok() ? make_error(Code::kNotFound, "there is no snapshot {}", a) : sa.status();
      return;
    }
    std::optional<SnapshotInfo> sb;
    if (b) {
      auto r = st.find_snapshot(*b);
      if (!r.is_ok() || !*r) {
        result = r.is_ok() ? make_error(Code::kNotFound, "there is no snapshot {}", *b) : r.status();
        return;
      }
      sb = **r;
    }
    result = st.diff(**sa, sb ? &*sb : nullptr, first, [&](uint64_t c) {
      if (c > last) return false;
      out.push_back(c);
      return out.size() < max;
    });
  });
  if (!result.is_ok()) return result;
  return out;
}

Result<Engine::ReplicaState> Engine::replica_state(const Uuid* uuid) {
  ReplicaState rs;
  Status result;
  core_->run_control(false, [&] {
    ExceptionStore& st = core_->store();
    auto newest = st.newest_snapshot();
    if (!newest.is_ok()) {
      result = newest.status();
      return;
    }
    rs.newest = *newest;
    rs.origin_changed_at = st.origin_changed_at();
    rs.pending = st.pending_receive();
    rs.snapshots = st.snapshot_count();
    rs.store_uuid = st.uuid();
  });
  if (!result.is_ok() || !uuid) return result.is_ok() ? Result<ReplicaState>(rs) : result;
  // In pages, so the engine thread is not held for long.
  for (SnapshotId from = 0;;) {
    MS_ASSIGN_OR_RETURN(auto page, list_snapshots(from, 1024));
    for (const SnapshotInfo& s : page)
      if (s.uuid == *uuid) rs.with_uuid = s;
    if (page.size() < 1024 || rs.with_uuid) break;
    from = page.back().id + 1;
  }
  return rs;
}

Result<std::optional<std::string>> Engine::property(uint64_t id) {
  Result<std::optional<std::string>> result = std::optional<std::string>();
  core_->run_control(false, [&] { result = core_->store().get_property(id); });
  return result;
}

Status Engine::set_property(uint64_t id, const std::optional<std::string>& value) {
  Status result;
  // Quiesced: the commit must not take remaps whose copies are in flight (E3).
  core_->run_control(true, [&] {
    result = core_->store().set_property(id, value);
    if (result.is_ok()) result = core_->commit_now();
  });
  return result;
}

Status Engine::begin_receive(const PendingReceive& pending) {
  Status result;
  core_->run_control(true, [&] {
    core_->store().set_pending_receive(pending);
    result = core_->commit_now();
  });
  return result;
}

Result<SnapshotInfo> Engine::finish_receive(const std::string& name, const Uuid& uuid) {
  // As any snapshot create (quiesced, direct writes shut out, the origin
  // durable first), with the end of the receive in the same commit: a crash
  // leaves either the pending receive or its snapshot.
  auto result = create_snapshot_with(std::nullopt, name, uuid, [](ExceptionStore& st) { st.set_pending_receive({}); });
  if (result.is_ok()) MS_LOG_INFO("received snapshot {} ({})", result->id, uuid.to_string());
  return result;
}

Status Engine::end_receive(bool restore_origin_state) {
  Status result;
  core_->run_control(true, [&] {
    ExceptionStore& st = core_->store();
    PendingReceive p = st.pending_receive();
    if (restore_origin_state && p.active()) st.set_origin_changed_at(p.origin_changed_before);
    st.set_pending_receive({});
    result = core_->commit_now();
  });
  return result;
}

}  // namespace multisnap
