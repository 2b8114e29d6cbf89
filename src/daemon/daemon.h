// Daemon: what `multisnap serve` runs. Opens the store and its origin (each
// locked against a second multisnap), the engine, the NBD server over
// EngineBackend and the control socket, and answers control requests
// (docs/control.md). stop() is the orderly shutdown SIGINT/SIGTERM trigger:
// stop listening, let in-flight requests finish, commit, flush, close.
//
// Thread-safe: handle() runs on control connection threads.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "control/control.h"
#include "control/fields.h"
#include "daemon/engine_backend.h"
#include "daemon/metrics.h"
#include "daemon/metrics_server.h"
#include "daemon/origin_identity.h"
#include "daemon/policy_runner.h"
#include "daemon/replication.h"
#include "engine/engine.h"
#include "io/file_device.h"
#include "nbd/server.h"

namespace multisnap {

struct DaemonOptions {
  std::string store_path;
  std::string origin_path;         // empty: the path the store remembers
  bool force_origin = false;       // serve an origin check_origin() refuses
  bool save_origin = false;        // record origin_path as the store's origin
  std::vector<std::string> nbd;    // "unix:PATH" / "tcp:HOST:PORT"
  std::vector<int> nbd_fds;        // listening sockets passed by systemd (taken over)
  // Serve one NBD client on standard input and output (no listeners) and
  // call on_stdio_closed, from a server thread, when it has gone.
  bool nbd_stdio = false;
  std::function<void()> on_stdio_closed;
  // The control socket: control_fd (passed by systemd, taken over) if >= 0,
  // else control_path; neither: no control socket.
  std::string control_path;
  int control_fd = -1;
  nbd::TlsMode tls = nbd::TlsMode::kOff;
  nbd::TlsOptions tls_credentials;
  std::chrono::milliseconds nbd_handshake_timeout{10000};  // 0: none
  std::string metrics;             // "tcp:HOST:PORT": serve Prometheus metrics there; empty: none
  EngineOptions engine;
  // Copies go through the page cache (the default: around it, with
  // O_DIRECT, where the store's file system allows).
  bool buffered_copies = false;
  // Buffered origin writes in pieces of at most this many bytes (0: whole);
  // BlockDevice::write_piece says why.
  uint32_t origin_write_piece = 64u << 10;
  Clock* clock = nullptr;  // the snapshot policy's time; null: the system clock
};

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> start(const DaemonOptions& options);
  ~Daemon();
  Status stop();

  std::optional<control::Json> handle(const control::Json& request, control::Writer& out);
  std::vector<std::string> nbd_addresses() const { return nbd_->addresses(); }
  // The control socket's path; "" when there is none.
  std::string control_path() const { return control_ ? control_->path() : std::string(); }
  // The Prometheus text of `serve --metrics` (docs/design.md, "Metrics").
  std::string metrics_text();
  Engine& engine() { return *engine_; }
  // Logs a warning when free space (data and metadata together) falls below
  // StoreStats::low_space_threshold(), and a note when it is back above.
  // serve calls it every few seconds; one thread only.
  void check_space();

 private:
  Daemon() = default;
  Result<SnapshotId> resolve(const control::SnapshotRef& ref);
  control::Json snapshot_create(const control::Json& req);
  control::Json snapshot_delete(const control::Json& req);
  std::optional<control::Json> send(const control::Json& req, control::Writer& out);
  control::Json rollback(const control::Json& req);
  control::Json grow(const control::Json& req);
  void snapshot_list(const control::Json& req, control::Writer& out);
  control::Json status();
  control::Json policy_set(const control::Json& req);
  control::Json policy_show();
  control::Json policy_clear();
  // What `snapshot delete` without --force does, for the policy.
  Status delete_unused_snapshot(SnapshotId id);

  DaemonOptions options_;
  bool low_space_warned_ = false;
  std::unique_ptr<FileDevice> store_, origin_;
  std::unique_ptr<PolicyRunner> policy_;  // declared before engine_: destroyed after it
  std::atomic<PolicyRunner*> policy_hook_{nullptr};  // the engine's on_no_space goes here
  std::unique_ptr<Engine> engine_;
  RequestMetrics request_metrics_;  // before backend_: its exports point here
  std::unique_ptr<EngineBackend> backend_;
  std::unique_ptr<Replication> replication_;
  std::unique_ptr<nbd::Server> nbd_;
  std::unique_ptr<control::ControlServer> control_;
  std::unique_ptr<MetricsServer> metrics_;
  std::mutex stop_mu_;
  bool stopped_ = false;
};

// The origin identity recorded in a store (property 3), read without
// opening an engine; nullopt for a store made before origins were recorded.
Result<std::optional<OriginIdentity>> read_origin_identity(FileDevice& store, bool use_older_commit = false);

// Locks a device file against another multisnap (flock). Shared for
// read-only tools (check, dump), exclusive for serve and create.
Status lock_device(FileDevice& dev, bool exclusive);


}  // namespace multisnap
