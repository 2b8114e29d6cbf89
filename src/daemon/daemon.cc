#include "daemon/daemon.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>

#include <climits>
#include <cstdlib>

#include <ctime>
#include <set>
#include <thread>

#include "control/requests.h"
#include "policy/policy.h"
#include "util/clock.h"
#include "util/units.h"
#include "util/log.h"
#include "util/units.h"
#include "util/uuid.h"

namespace multisnap {

using control::Json;

Status lock_device(FileDevice& dev, bool exclusive) {
  MS_ASSIGN_OR_RETURN(bool taken, dev.try_lock(exclusive));
  if (taken) return Status::ok();
  return make_error(Code::kBusy, "{} is in use by another multisnap (is `multisnap serve` running on it?)",
                    dev.path());
}

Result<std::optional<OriginIdentity>> read_origin_identity(FileDevice& store, bool use_older_commit) {
  TmOptions tmo;
  tmo.read_only = true;
  tmo.cache_bytes = 1 << 20;
  tmo.use_older_commit = use_older_commit;
  MS_ASSIGN_OR_RETURN(auto st, open_store(store, tmo));
  MS_ASSIGN_OR_RETURN(std::optional<std::string> text, st->get_property(kOriginProperty));
  if (!text) return std::optional<OriginIdentity>();
  MS_ASSIGN_OR_RETURN(OriginIdentity id, origin_from_property(*text));
  return std::optional<OriginIdentity>(std::move(id));
}

Result<std::unique_ptr<Daemon>> Daemon::start(const DaemonOptions& options) {
  std::unique_ptr<Daemon> d(new Daemon);
  d->options_ = options;
  char resolved[PATH_MAX];
  std::string store_path = ::realpath(options.store_path.c_str(), resolved) ? resolved : options.store_path;
  FileDeviceOptions store_options;
  store_options.direct_writes = !options.buffered_copies;
  MS_ASSIGN_OR_RETURN(d->store_, FileDevice::open(store_path, store_options));
  MS_TRY(lock_device(*d->store_, true));
  MS_ASSIGN_OR_RETURN(Superblock sb, read_superblock(*d->store_));
  // The origin is checked before the engine opens: a rollback resumes by
  // itself there and would write to whatever file it was given.
  MS_ASSIGN_OR_RETURN(std::optional<OriginIdentity> recorded,
                      read_origin_identity(*d->store_, options.engine.use_older_commit));
  std::string origin_path = options.origin_path;
  if (origin_path.empty()) origin_path = recorded && !recorded->path.empty() ? recorded->path : sb.origin_path;
  origin_path = absolute_path(origin_path);
  FileDeviceOptions origin_options;
  origin_options.write_piece = options.origin_write_piece;
  auto origin = FileDevice::open(origin_path, origin_options);
  if (!origin.is_ok())
    return origin.status().annotate(fmt::format("the origin of {} (pass --origin if it moved)", options.store_path));
  d->origin_ = std::move(origin).value();
  MS_TRY(lock_device(*d->origin_, true));
  MS_ASSIGN_OR_RETURN(OriginIdentity seen, observe_origin(*d->origin_));
  std::vector<std::string> warnings;
  if (recorded) {
    recorded->size = sb.layout.origin_size;
    MS_TRY(check_origin(*recorded, seen, options.force_origin, &warnings));
  } else if (seen.size > sb.layout.origin_size) {
    warnings.push_back(fmt::format("the origin {} grew from {} to {} bytes; only the first {} are served",
                                   seen.path, sb.layout.origin_size, seen.size, sb.layout.origin_size));
  }
  for (const std::string& w : warnings) MS_LOG_WARN("WARNING: {}", w);
  Daemon* self = d.get();
  EngineOptions eo = options.engine;
  eo.on_no_space = [self] {
    PolicyRunner* p = self->policy_hook_.load();
    return p != nullptr && p->on_no_space();
  };
  MS_ASSIGN_OR_RETURN(d->engine_, Engine::open(*d->origin_, *d->store_, eo));
  if (!recorded || options.save_origin) {
    // A store made before origins were recorded adopts this one.
    OriginIdentity now = seen;
    now.size = sb.layout.origin_size;
    if (recorded) {
      now.uuid = recorded->uuid;
    } else {
      MS_ASSIGN_OR_RETURN(Uuid u, random_uuid());
      now.uuid = u.to_string();
    }
    Status saved = d->engine_->set_property(kOriginProperty, to_property(now));
    if (options.save_origin) MS_TRY(saved.annotate("cannot record the origin (--save)"));
    if (saved.is_ok()) {
      mark_origin(*d->origin_, now.uuid);
      if (options.save_origin) MS_LOG_INFO("recorded {} as the origin of {}", now.path, store_path);
    } else {  // adopting is a convenience: serve anyway
      MS_LOG_WARN("could not record the origin's identity in the store: {}", saved.to_string());
    }
  }
  MS_LOG_INFO("serving {}: origin {} ({})", store_path, d->origin_->path(), format_size(sb.layout.origin_size));
  d->backend_ = std::make_unique<EngineBackend>(*d->engine_, options.engine.read_only_snapshots,
                                                options.metrics.empty() ? nullptr : &d->request_metrics_);
  d->replication_ = std::make_unique<Replication>(*d->engine_);
  nbd::ServerOptions so;
  so.listen = options.nbd;
  so.listen_fds = options.nbd_fds;
  so.stream_only = options.nbd_stdio;
  so.handshake_timeout = options.nbd_handshake_timeout;
  so.tls = options.tls;
  so.tls_credentials = options.tls_credentials;
  if (options.nbd_stdio) {
    // The only connection there can be: its end is the end of serve.
    so.on_connection = [done = options.on_stdio_closed](const nbd::ConnectionEvent& e) {
      if (e.kind == nbd::ConnectionEvent::Kind::kClosed && done) done();
    };
  }
  d->policy_ = std::make_unique<PolicyRunner>(*d->engine_, options.clock ? *options.clock : system_clock(),
                                              [self](SnapshotId id) { return self->delete_unused_snapshot(id); });
  MS_ASSIGN_OR_RETURN(d->nbd_, nbd::Server::start(*d->backend_, std::move(so)));
  MS_TRY(d->policy_->start());
  d->policy_hook_ = d->policy_.get();
  auto handler = [self](const Json& req, control::Writer& out) { return self->handle(req, out); };
  if (options.control_fd >= 0) {
    MS_ASSIGN_OR_RETURN(d->control_, control::ControlServer::adopt(options.control_fd, handler));
  } else if (!options.control_path.empty()) {
    MS_ASSIGN_OR_RETURN(d->control_, control::ControlServer::start(options.control_path, handler));
  }
  if (!options.metrics.empty()) {
    MetricsServer::Options mo;
    mo.listen = options.metrics;
    MS_ASSIGN_OR_RETURN(d->metrics_, MetricsServer::start(mo, [self] { return self->metrics_text(); }));
  }
  for (const std::string& a : d->nbd_->addresses()) MS_LOG_INFO("serving NBD on {}", a);
  if (options.nbd_stdio) {
    // Duplicates, so that nothing else ever writes on the client's stream:
    // standard input and output become /dev/null.
    int in = ::fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
    int out = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (in < 0 || out < 0 || null < 0) {
      Status s = errno_status(errno, "cannot take over standard input and output");
      for (int fd : {in, out, null}) if (fd >= 0) ::close(fd);
      return s;
    }
    ::dup2(null, STDIN_FILENO);
    ::dup2(null, STDOUT_FILENO);
    ::close(null);
    MS_TRY(d->nbd_->serve_stream(in, out).status());
    MS_LOG_INFO("serving NBD on standard input and output");
  }
  if (d->control_) {
    MS_LOG_INFO("control socket {}", d->control_->path());
  } else {
    MS_LOG_INFO("no control socket (give --control PATH for snapshot and status commands)");
  }
  if (d->metrics_) MS_LOG_INFO("metrics on http://{}/metrics", d->metrics_->address().substr(4));
  return d;
}

Daemon::~Daemon() { stop().ignore(); }

Status Daemon::stop() {
  std::lock_guard lock(stop_mu_);
  if (stopped_) return Status::ok();
  stopped_ = true;
  if (control_) control_->stop();
  metrics_.reset();
  if (nbd_) nbd_->stop();  // in-flight requests finish and are answered first
  // After the NBD clients: a write waiting for the policy to free space
  // is among those requests.
  policy_hook_ = nullptr;
  if (policy_) policy_->stop();
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
  if (cmd == "grow") return grow(req);
  if (cmd == "policy-set") return policy_set(req);
  if (cmd == "policy-show") return policy_show();
  if (cmd == "policy-clear") return policy_clear();
  if (cmd == "snapshot-list") {
    snapshot_list(req, out);
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
  return Json{{"ok", true}, {"snapshot", snapshot_json(*engine_, *s)}};
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
              {"rollback",
               {{"snapshot", *id},
                {"chunks", started.total_chunks},
                {"bytes", started.total_chunks * engine_->layout().chunk_size}}},
              {"disconnected", dropped}};
}

Json Daemon::grow(const Json& req) {
  auto args = control::parse_grow(req);
  if (!args.is_ok()) return control::error_answer(args.status());
  auto g = engine_->grow(args->store_size);
  if (!g.is_ok()) return control::error_answer(g.status());
  return Json{{"ok", true},
              {"grow",
               {{"old_size", g->old_bytes},
                {"new_size", g->new_bytes},
                {"added_bytes", g->added_bytes},
                {"max_size", g->max_bytes}}}};
}

Json Daemon::snapshot_delete(const Json& req) {
  auto args = control::parse_snapshot_delete(req);
  if (!args.is_ok()) return control::error_answer(args.status());
  // Several: every one is resolved and checked before any is deleted, and
  // all are deleted in one commit.
  std::vector<SnapshotId> ids;
  std::set<std::string> names;  // their exports
  for (const control::SnapshotRef& ref : args->snapshots) {
    auto id = resolve(ref);
    if (!id.is_ok()) return control::error_answer(id.status());
    if (Status busy = replication_->may_delete(*id); !busy.is_ok()) return control::error_answer(busy);
    if (!names.insert("snapshot/" + std::to_string(*id)).second)
      return control::error_answer(
          make_error(Code::kInvalidArgument, "snapshot {} is named twice ('{}')", *id,
                     control::quote_for_message(ref.key())));
    ids.push_back(*id);
  }
  bool force = args->force;
  auto matches = [&names](std::string_view export_name) { return names.count(std::string(export_name)) > 0; };
  for (SnapshotId id : ids) {
    auto one = [name = "snapshot/" + std::to_string(id)](std::string_view export_name) { return export_name == name; };
    size_t clients = nbd_->count_connections(one);
    if (clients > 0 && !force)
      return control::error_answer(make_error(
          Code::kBusy, "snapshot {} has {} NBD client(s) connected; use --force to disconnect them", id, clients));
  }
  for (SnapshotId id : ids) backend_->block_snapshot(id);
  size_t dropped = force ? nbd_->disconnect(matches) : 0;
  Status s = engine_->delete_snapshots(ids);
  // A client still negotiating may hold the volume for a moment.
  for (int i = 0; i < 100 && s.code() == Code::kBusy && force; ++i) {
    dropped += nbd_->disconnect(matches);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = engine_->delete_snapshots(ids);
  }
  for (SnapshotId id : ids) backend_->unblock_snapshot(id);
  if (!s.is_ok()) return control::error_answer(s);
  Json deleted = args->batch ? Json(ids) : Json(ids[0]);
  return Json{{"ok", true}, {"deleted", std::move(deleted)}, {"disconnected", dropped}};
}

void Daemon::snapshot_list(const Json& req, control::Writer& out) {
  auto args = control::parse_snapshot_list(req);
  if (!args.is_ok()) {
    out.write(control::to_text(control::error_answer(args.status())) + "\n");
    return;
  }
  // With "space": the pass over the exceptions first (O(snapshots) memory),
  // then the list. A snapshot created after the pass reads nothing from
  // the store yet: 0 and 0.
  std::optional<SpaceUse> space;
  if (args->space) {
    auto r = engine_->space_use();
    if (!r.is_ok()) {
      out.write(control::to_text(control::error_answer(r.status().annotate("computing space use"))) + "\n");
      return;
    }
    space = std::move(r).value();
  }
  const uint64_t chunk = engine_->layout().chunk_size;
  // The parent's name of the last clone listed: clones of one snapshot
  // usually come together, and each lookup is a trip to the engine thread.
  SnapshotId parent_id = kOriginId;
  std::string parent;
  auto append = [&](std::string& text, const SnapshotInfo& s) {
    if (s.parent != kOriginId && s.parent != parent_id) {
      parent = parent_name(*engine_, s);
      parent_id = s.parent;
    }
    std::string_view of_name = s.parent == kOriginId ? std::string_view() : std::string_view(parent);
    if (!space) return append_snapshot_json(text, s, of_name);
    auto it = std::lower_bound(space->snapshots.begin(), space->snapshots.end(), s.id,
                               [](const SnapshotSpace& a, SnapshotId id) { return a.id < id; });
    SnapshotSpaceBytes bytes;
    if (it != space->snapshots.end() && it->id == s.id)
      bytes = {it->exclusive_chunks * chunk, it->shared_chunks * chunk};
    append_snapshot_json(text, s, of_name, &bytes);
  };
  // Streamed in pages: the daemon never holds the whole list. "ok" comes
  // last, so a page that fails half-way ends the answer as a failure
  // (docs/control.md); a first page that fails is a plain error answer.
  // Pages of 4,096 were no faster at 10^6 snapshots (docs/design.md, 7).
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
      append(text, s);
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
  text += ']';
  if (space)
    text += ",\"space\":" + control::to_text(Json{{"exceptions", space->exceptions},
                                                 {"reclaim_pending_bytes", space->unreferenced_chunks * chunk},
                                                 {"restarts", space->restarts}});
  out.write(text + ",\"ok\":true}\n");
}

std::string Daemon::metrics_text() { return render_metrics(engine_->status(), nbd_->stats(), request_metrics_); }

void Daemon::check_space() {
  StoreStats s = engine_->status().store;
  const bool low = s.low_on_space();
  if (low && !low_space_warned_)
    MS_LOG_WARN("the store is low on space: {} free ({} for data, {} for metadata); the warning threshold is {} "
                "for data; delete snapshots or give the store more space",
                format_size(s.free_bytes()), format_size(s.free_data_bytes()), format_size(s.free_meta_bytes()),
                format_size(s.low_space_threshold()));
  else if (!low && low_space_warned_)
    MS_LOG_INFO("the store has {} free again ({} for data), above the warning threshold", format_size(s.free_bytes()),
                format_size(s.free_data_bytes()));
  low_space_warned_ = low;
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
                {"used_size", s.store_bytes},
                {"max_size", s.max_store_bytes},
                {"growable", s.growable},
                {"chunk_size", chunk},
                {"data", {{"total_bytes", s.data_chunks_total * chunk},
                          {"used_bytes", s.data_chunks_used * chunk},
                          {"total_chunks", s.data_chunks_total},
                          {"used_chunks", s.data_chunks_used}}},
                {"metadata", {{"total_bytes", s.meta_blocks_total * 4096},
                              {"used_bytes", s.meta_blocks_used * 4096},
                              {"borrowed_chunks", s.meta_chunks_borrowed},
                              {"borrowed_bytes", s.meta_chunks_borrowed * chunk}}},
                {"space", {{"free_bytes", s.free_bytes()},
                           {"data_free_bytes", s.free_data_bytes()},
                           {"metadata_free_bytes", s.free_meta_bytes()},
                           {"shared", s.shared_space},
                           {"low", s.low_on_space()},
                           {"low_threshold_bytes", s.low_space_threshold()}}},
                {"generation", s.generation}};
  j["snapshots"] = s.snapshots;
  if (s.snapshot_slots_free != UINT64_MAX) j["snapshot_slots_free"] = s.snapshot_slots_free;
  j["exceptions"] = s.exceptions;
  j["reclaim"] = {{"active", s.reclaim_active}, {"progress", s.reclaim_progress}};
  j["io"] = {{"reads", c.reads},         {"writes", c.writes},       {"flushes", c.flushes},
             {"trims", c.trims},         {"zeroes", c.zeroes},       {"bytes_read", c.bytes_read},
             {"bytes_written", c.bytes_written}, {"errors", c.errors}, {"retries", c.retries},
             {"in_flight", st.requests_in_flight}, {"direct_writes", c.direct_writes},
             {"direct_reads", c.direct_reads}, {"origin_writes_inline", c.origin_writes_inline}};
  j["copies"] = {{"jobs", c.copy_jobs}, {"chunks", c.chunks_copied}, {"runs", c.copy_runs},
                 {"runs_mapped", c.copy_runs_mapped},
                 {"direct", store_->direct_fd() >= 0}};
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
              {"protocol_violations", ns.protocol_violations},
              {"tls_handshake_failures", ns.tls_handshake_failures},
              {"tls", options_.tls == nbd::TlsMode::kOff  ? "off"
                      : options_.tls == nbd::TlsMode::kOn ? "on"
                                                          : "require"}};
  j["open_volumes"] = st.open_volumes;
  j["failure"] = st.failure.empty() ? Json(nullptr) : Json(st.failure);
  const RollbackStatus& rb = st.rollback;
  j["rollback"] = {{"active", rb.active},
                   {"snapshot", rb.active ? Json(rb.target) : Json(nullptr)},
                   {"done_chunks", rb.done_chunks},
                   {"total_chunks", rb.total_chunks},
                   {"progress", rb.total_chunks ? double(rb.done_chunks) / double(rb.total_chunks) : 1.0},
                   {"error", rb.error.empty() ? Json(nullptr) : Json(rb.error)}};
  j["space_scan"] = {{"active", st.space_scan.active},
                     {"done", st.space_scan.done},
                     {"total", st.space_scan.total}};
  return Json{{"ok", true}, {"status", j}};
}

Status Daemon::delete_unused_snapshot(SnapshotId id) {
  MS_TRY(replication_->may_delete(id));
  std::string name = "snapshot/" + std::to_string(id);
  size_t clients = nbd_->count_connections([&](std::string_view e) { return e == name; });
  if (clients > 0) return make_error(Code::kBusy, "snapshot {} has {} NBD client(s) connected", id, clients);
  backend_->block_snapshot(id);
  Status s = engine_->delete_snapshot(id);
  backend_->unblock_snapshot(id);
  return s;
}

namespace {
Json policy_json(const policy::Policy& p) {
  return Json{{"every", policy::format_duration(p.every)},
              {"every_seconds", p.every},
              {"keep_last", p.keep_last},
              {"keep_hourly", p.keep_hourly},
              {"keep_daily", p.keep_daily},
              {"keep_weekly", p.keep_weekly},
              {"keep_monthly", p.keep_monthly},
              {"prefix", p.prefix},
              {"on_full", std::string(policy::on_full_name(p.on_full))},
              {"set_at", iso8601(static_cast<uint64_t>(p.set_at) * 1000000000ull)},
              {"first_id", p.first_id}};
}

// The fields of a policy-set request, each of its one JSON type.
Result<policy::Policy> parse_policy_request(const Json& req) {
  policy::Policy p;
  for (auto it = req.begin(); it != req.end(); ++it) {
    const std::string& key = it.key();
    const Json& v = it.value();
    if (key == "command" || v.is_null()) continue;  // null: the default, as absent
    if (key == "every") {
      if (v.is_number_unsigned()) {
        uint64_t n = v.get<uint64_t>();
        if (n < 1 || n > policy::kMaxEvery)
          return make_error(Code::kInvalidArgument, "every must be from 1 second to 366 days");
        p.every = n;
      } else if (v.is_string()) {
        MS_ASSIGN_OR_RETURN(p.every, policy::parse_duration(v.get<std::string>()));
      } else {
        return make_error(Code::kInvalidArgument, "every must be a duration string (e.g. \"5m\") or seconds");
      }
    } else if (key.rfind("keep_", 0) == 0) {
      uint32_t policy::Policy::*field = key == "keep_last"      ? &policy::Policy::keep_last
                                        : key == "keep_hourly"  ? &policy::Policy::keep_hourly
                                        : key == "keep_daily"   ? &policy::Policy::keep_daily
                                        : key == "keep_weekly"  ? &policy::Policy::keep_weekly
                                        : key == "keep_monthly" ? &policy::Policy::keep_monthly
                                                                : nullptr;
      if (!field) return make_error(Code::kInvalidArgument, "unknown policy field '{}'", key);
      if (!v.is_number_unsigned() || v.get<uint64_t>() > policy::kMaxKeep)
        return make_error(Code::kInvalidArgument, "{} must be a whole number from 0 to {}", key, policy::kMaxKeep);
      p.*field = static_cast<uint32_t>(v.get<uint64_t>());
    } else if (key == "prefix") {
      if (!v.is_string()) return make_error(Code::kInvalidArgument, "prefix must be a string");
      p.prefix = v.get<std::string>();
    } else if (key == "on_full") {
      if (!v.is_string()) return make_error(Code::kInvalidArgument, "on_full must be \"error\" or \"delete-oldest\"");
      MS_ASSIGN_OR_RETURN(p.on_full, policy::parse_on_full(v.get<std::string>()));
    } else {
      return make_error(Code::kInvalidArgument, "unknown policy field '{}'", key);
    }
  }
  MS_TRY(policy::validate(p));
  return p;
}
}  // namespace

Json Daemon::policy_set(const Json& req) {
  auto p = parse_policy_request(req);
  if (!p.is_ok()) return control::error_answer(p.status());
  auto stored = policy_->set(*p);
  if (!stored.is_ok()) return control::error_answer(stored.status());
  return policy_show();
}

Json Daemon::policy_show() {
  auto st = policy_->state();
  if (!st.is_ok()) return control::error_answer(st.status());
  if (!st->policy) return Json{{"ok", true}, {"policy", nullptr}, {"next_due", nullptr}, {"automatic_snapshots", 0}};
  return Json{{"ok", true},
              {"policy", policy_json(*st->policy)},
              {"next_due", iso8601(static_cast<uint64_t>(std::max<int64_t>(st->next_due, 0)) * 1000000000ull)},
              {"automatic_snapshots", st->automatic}};
}

Json Daemon::policy_clear() {
  auto st = policy_->state();
  bool had = st.is_ok() && st->policy.has_value();
  Status s = policy_->clear();
  if (!s.is_ok()) return control::error_answer(s);
  return Json{{"ok", true}, {"cleared", had}};
}

}  // namespace multisnap
