#include "daemon/daemon.h"

#include <sys/file.h>

#include <climits>
#include <cstdlib>

#include <ctime>
#include <thread>

#include "control/requests.h"
#include "util/clock.h"
#include "util/log.h"

namespace multisnap {

using control::Json;

Status lock_device(const FileDevice& dev, bool exclusive) {
  if (::flock(dev.fd(), (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0) return Status::ok();
  if (errno == EWOULDBLOCK)
    return make_error(Code::kBusy, "{} is in use by another multisnap (is `multisnap serve` running on it?)",
                      dev.path());
  return errno_status(errno, "cannot lock " + dev.path());
}

Result<std::unique_ptr<Daemon>> Daemon::start(const DaemonOptions& options) {
  std::unique_ptr<Daemon> d(new Daemon);
  d->options_ = options;
  char resolved[PATH_MAX];
  std::string store_path = ::realpath(options.store_path.c_str(), resolved) ? resolved : options.store_path;
  MS_ASSIGN_OR_RETURN(d->store_, FileDevice::open(store_path));
  MS_TRY(lock_device(*d->store_, true));
  MS_ASSIGN_OR_RETURN(Superblock sb, read_superblock(*d->store_));
  std::string origin_path = options.origin_path.empty() ? sb.origin_path : options.origin_path;
  auto origin = FileDevice::open(origin_path);
  if (!origin.is_ok())
    return origin.status().annotate(fmt::format("the origin of {} (pass --origin if it moved)", options.store_path));
  d->origin_ = std::move(origin).value();
  MS_TRY(lock_device(*d->origin_, true));
  MS_ASSIGN_OR_RETURN(d->engine_, Engine::open(*d->origin_, *d->store_, options.engine));
  d->backend_ = std::make_unique<EngineBackend>(*d->engine_, options.engine.read_only_snapshots);
  d->replication_ = std::make_unique<Replication>(*d->engine_);
  nbd::ServerOptions so;
  so.listen = options.nbd;
  so.handshake_timeout = options.nbd_handshake_timeout;
  MS_ASSIGN_OR_RETURN(d->nbd_, nbd::Server::start(*d->backend_, std::move(so)));
  Daemon* self = d.get();
  MS_ASSIGN_OR_RETURN(d->control_, control::ControlServer::start(options.control_path,
                                                                  [self](const Json& req, control::Writer& out) {
                                                                    return self->handle(req, out);
                                                                  }));
  for (const std::string& a : d->nbd_->addresses()) MS_LOG_INFO("serving NBD on {}", a);
  MS_LOG_INFO("control socket {}", options.control_path);
  return d;
}

Daemon::~Daemon() { stop().ignore(); }

Status Daemon::stop() {
  std::lock_guard lock(stop_mu_);
  if (stopped_) return Status::ok();
  stopped_ = true;
  if (control_) control_->stop();
  if (nbd_) nbd_->stop();  // in-flight requests finish and are answered first
  Status s;
  if (engine_) {
    s = engine_->sync();
    engine_.reset();  // drains, commits, stops the engine thread
  }
  backend_.reset();
  return s;
}

Result<SnapshotId> Daemon::resolve(const control::SnapshotRef& ref) {
  std::string key = ref.key();
  MS_ASSIGN_OR_RETURN(auto found, engine_->find_snapshot(key));
  if (!found)
    return make_error(Code::kNotFound, "there is no snapshot '{}'",
                      control::quote_for_message(key));
  return found->id;
}

std::optional<Json> Daemon::handle(const Json& req, control::Writer& out) {
  const std::string cmd = req["command"].get<std::string>();
  if (cmd == "ping") return Json{{"ok", true}, {"version", MULTISNAP_VERSION}};
  if (cmd == "snapshot-create") return snapshot_create(req);
  if (cmd == "snapshot-delete") return snapshot_delete(req);
  if (cmd == "status") return status();
  if (cmd == "send") return send(req, out);
  if (cmd == "receive") {
    auto args = control::parse_receive(req);
    if (!args.is_ok()) return control::error_answer(args.status());
    return replication_->receive(args->name, out);
  }
  if (cmd == "receive-abort") return replication_->receive_abort();
  if (cmd == "rollback") return rollback(req);
  if (cmd == "snapshot-list") {
    snapshot_list(out);
    return std::nullopt;
  }
  return control::error_answer(
      make_error(Code::kInvalidArgument, "unknown command '{}'", control::quote_for_message(cmd)));
}

Json Daemon::snapshot_create(const Json& req) {
  auto args = control::parse_snapshot_create(req);
  if (!args.is_ok()) return control::error_answer(args.status());
  std::optional<SnapshotId> of;
  if (args->of) {
    auto r = resolve(*args->of);
    if (!r.is_ok()) return control::error_answer(r.status());
    of = *r;
  }
  auto s = engine_->create_snapshot(of, args->name);
  if (!s.is_ok()) return control::error_answer(s.status());
  return Json{{"ok", true}, {"snapshot", snapshot_json(*s)}};
}

std::optional<Json> Daemon::send(const Json& req, control::Writer& out) {
  auto args = control::parse_send(req);
  if (!args.is_ok()) return control::error_answer(args.status());
  auto find = [&](const control::SnapshotRef& ref) -> Result<SnapshotInfo> {
    MS_ASSIGN_OR_RETURN(auto found, engine_->find_snapshot(ref.key()));
    if (!found) return make_error(Code::kNotFound, "there is no snapshot '{}'", control::quote_for_message(ref.key()));
    return *found;
  };
  auto target = find(args->snapshot);
  if (!target.is_ok()) return control::error_answer(target.status());
  std::optional<SnapshotInfo> base;
  if (args->from) {
    auto b = find(*args->from);
    if (!b.is_ok()) return control::error_answer(b.status());
    base = *b;
  }
  return replication_->send(*target, base, args->compress, out);
}

Json Daemon::rollback(const Json& req) {
  auto args = control::parse_rollback(req);
  if (!args.is_ok()) return control::error_answer(args.status());
  auto id = resolve(args->snapshot);
  if (!id.is_ok()) return control::error_answer(id.status());
  auto on_origin = [](std::string_view export_name) { return export_name == "origin" || export_name.empty(); };
  size_t clients = nbd_->count_connections(on_origin);
  if (clients > 0 && !args->force)
    return control::error_answer(make_error(
        Code::kBusy, "the origin has {} NBD client(s) connected; use --force to disconnect them", clients));
  size_t dropped = args->force ? nbd_->disconnect(on_origin) : 0;
  Status s = engine_->start_rollback(*id);
  // A client still negotiating may hold the origin for a moment.
  for (int i = 0; i < 100 && s.code() == Code::kBusy && args->force && engine_->rollback_status().target == 0; ++i) {
    dropped += nbd_->disconnect(on_origin);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = engine_->start_rollback(*id);
  }
  if (!s.is_ok()) return control::error_answer(s);
  RollbackStatus started = engine_->rollback_status();
  s = engine_->wait_rollback();
  if (!s.is_ok()) return control::error_answer(s.annotate("the rollback stopped (it resumes when serve restarts)"));
  return Json{{"ok", true},
              {"rollback", {{"snapshot", *id}, {"chunks", started.total_chunks}}},
              {"disconnected", dropped}};
}

Json Daemon::snapshot_delete(const Json& req) {
  auto args = control::parse_snapshot_delete(req);
  if (!args.is_ok()) return control::error_answer(args.status());
  auto id = resolve(args->snapshot);
  if (!id.is_ok()) return control::error_answer(id.status());
  if (Status busy = replication_->may_delete(*id); !busy.is_ok()) return control::error_answer(busy);
  bool force = args->force;
  std::string name = "snapshot/" + std::to_string(*id);
  auto matches = [name](std::string_view export_name) { return export_name == name; };
  size_t clients = nbd_->count_connections(matches);
  if (clients > 0 && !force)
    return control::error_answer(make_error(Code::kBusy,
                                            "snapshot {} has {} NBD client(s) connected; use --force to disconnect them",
                                            *id, clients));
  backend_->block_snapshot(*id);
  size_t dropped = force ? nbd_->disconnect(matches) : 0;
  Status s = engine_->delete_snapshot(*id);
  // A client still negotiating may hold the volume for a moment.
  for (int i = 0; i < 100 && s.code() == Code::kBusy && force; ++i) {
    dropped += nbd_->disconnect(matches);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = engine_->delete_snapshot(*id);
  }
  backend_->unblock_snapshot(*id);
  if (!s.is_ok()) return control::error_answer(s);
  return Json{{"ok", true}, {"deleted", *id}, {"disconnected", dropped}};
}

void Daemon::snapshot_list(control::Writer& out) {
  // Streamed in pages: the daemon never holds the whole list. "ok" comes
  // last, so a page that fails half-way ends the answer as a failure
  // (docs/control.md); a first page that fails is a plain error answer.
  constexpr size_t kPage = 1024;
  auto page = engine_->list_snapshots(0, kPage);
  if (!page.is_ok()) {
    out.write(control::to_text(control::error_answer(page.status())) + "\n");
    return;
  }
  std::string text = "{\"snapshots\":[";
  bool first = true;
  for (;;) {
    for (const SnapshotInfo& s : *page) {
      if (!first) text += ',';
      first = false;
      text += control::to_text(snapshot_json(s));
    }
    if (page->size() < kPage || page->back().id == UINT32_MAX) break;
    if (!out.write(text)) return;
    text.clear();
    page = engine_->list_snapshots(page->back().id + 1, kPage);
    if (!page.is_ok()) {
      Json error = control::error_answer(page.status().annotate("listing snapshots"))["error"];
      out.write("],\"ok\":false,\"error\":" + control::to_text(error) + "}\n");
      return;
    }
  }
  out.write(text + "],\"ok\":true}\n");
}

Json Daemon::status() {
  EngineStatus st = engine_->status();
  const StoreStats& s = st.store;
  const EngineCounters& c = st.counters;
  nbd::ServerStats ns = nbd_->stats();
  uint64_t chunk = s.chunk_size;
  Json j;
  j["version"] = MULTISNAP_VERSION;
  j["format"] = s.format;
  j["origin"] = {{"path", origin_->path()}, {"size", s.origin_size}};
  j["store"] = {{"path", store_->path()},
                {"size", store_->size()},
                {"chunk_size", chunk},
                {"data", {{"total_bytes", s.data_chunks_total * chunk},
                          {"used_bytes", s.data_chunks_used * chunk},
                          {"total_chunks", s.data_chunks_total},
                          {"used_chunks", s.data_chunks_used}}},
                {"metadata", {{"total_bytes", s.meta_blocks_total * 4096}, {"used_bytes", s.meta_blocks_used * 4096}}},
                {"generation", s.generation}};
  j["snapshots"] = s.snapshots;
  if (s.snapshot_slots_free != UINT64_MAX) j["snapshot_slots_free"] = s.snapshot_slots_free;
  j["exceptions"] = s.exceptions;
  j["reclaim"] = {{"active", s.reclaim_active}, {"progress", s.reclaim_progress}};
  j["io"] = {{"reads", c.reads},         {"writes", c.writes},       {"flushes", c.flushes},
             {"trims", c.trims},         {"zeroes", c.zeroes},       {"bytes_read", c.bytes_read},
             {"bytes_written", c.bytes_written}, {"errors", c.errors}, {"retries", c.retries},
             {"in_flight", st.requests_in_flight}};
  j["copies"] = {{"jobs", c.copy_jobs}, {"chunks", c.chunks_copied}};
  j["commits"] = c.commits;
  j["cache"] = {{"capacity_bytes", st.cache_capacity_blocks * 4096},
                {"used_bytes", st.cache_blocks * 4096},
                {"hits", st.cache_hits},
                {"misses", st.cache_misses}};
  j["nbd"] = {{"listen", nbd_->addresses()},
              {"connections", ns.connections_now},
              {"connections_total", ns.connections_total},
              {"requests", ns.requests},
              {"errors", ns.errors},
              {"protocol_violations", ns.protocol_violations}};
  j["open_volumes"] = st.open_volumes;
  j["failure"] = st.failure.empty() ? Json(nullptr) : Json(st.failure);
  const RollbackStatus& rb = st.rollback;
  j["rollback"] = {{"active", rb.active},
                   {"snapshot", rb.active ? Json(rb.target) : Json(nullptr)},
                   {"done_chunks", rb.done_chunks},
                   {"total_chunks", rb.total_chunks},
                   {"progress", rb.total_chunks ? double(rb.done_chunks) / double(rb.total_chunks) : 1.0},
                   {"error", rb.error.empty() ? Json(nullptr) : Json(rb.error)}};
  return Json{{"ok", true}, {"status", j}};
}

}  // namespace multisnap
