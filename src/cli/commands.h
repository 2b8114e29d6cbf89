// The multisnap command's subcommands. Each returns the process exit code
// and prints errors as "multisnap: <one sentence>" on stderr.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace multisnap::cli {

struct CreateArgs {
  std::string origin, store;
  std::string origin_size, chunk_size = "64K", format = "range", store_size, metadata_size, max_store_size;
  bool force = false;
  bool preallocate = false;
};
int run_create(const CreateArgs& a);

struct ServeArgs {
  std::string store, origin, control, cache_size = "64M";
  std::vector<std::string> nbd;  // also "stdio"
  std::string tls;               // off, on, require; "": require with credentials, else off
  std::string tls_certificates, tls_psk;
  bool tls_verify_peer = false;
  uint32_t copy_slots = 0;  // 0: automatic (EngineOptions::copy_slots)
  double handshake_timeout = 10;  // seconds; 0 = none
  bool read_only_snapshots = false;
  bool buffered_copies = false;
  bool no_mapped_copies = false;
  bool whole_origin_writes = false;
  bool no_inline_origin_writes = false;
  bool use_older_commit = false;
  std::string metrics;       // tcp:HOST:PORT for Prometheus
  bool force = false;        // serve an origin that does not look like the store's
  bool save = false;         // record --origin as the store's origin
};
int run_serve(const ServeArgs& a);

struct OnlineArgs {
  std::string control;
  bool json = false;
};
int run_snapshot_create(const OnlineArgs& o, const std::string& of, const std::string& name);
int run_snapshot_delete(const OnlineArgs& o, const std::vector<std::string>& snapshots, bool force);
// space: add each snapshot's exclusive and shared bytes; progress: show the
// pass on stderr.
int run_snapshot_list(const OnlineArgs& o, bool space, bool progress);
int run_status(const OnlineArgs& o);

struct SendArgs {
  std::string snapshot, from, output;
  bool compress = false, progress = false;
};
int run_send(const OnlineArgs& o, const SendArgs& a);
struct ReceiveArgs {
  std::string input, name;
  bool progress = false, abort = false;
};
int run_receive(const OnlineArgs& o, const ReceiveArgs& a);
// grow: online through the control socket, or (store_path given) offline.
int run_grow(const OnlineArgs& o, const std::string& store_size, const std::string& store_path);
// Grows a store that is not being served (offline.cc); committed when it returns.
Result<GrowResult> grow_offline(const std::string& store_path, uint64_t store_bytes);
int run_rollback(const OnlineArgs& o, const std::string& snapshot, bool force, bool progress);

// policy set: the request carries only what was given.
struct PolicyArgs {
  static constexpr int64_t kNotGiven = INT64_MIN;
  std::string every, prefix, on_full;
  int64_t keep_last = kNotGiven, keep_hourly = kNotGiven, keep_daily = kNotGiven, keep_weekly = kNotGiven,
          keep_monthly = kNotGiven;
};
int run_policy_set(const OnlineArgs& o, const PolicyArgs& a);
int run_policy_show(const OnlineArgs& o);
int run_policy_clear(const OnlineArgs& o);

int run_check(const std::string& store, bool json);
// Records PATH as the origin of a store that is not being served.
int run_set_origin(const std::string& store, const std::string& origin, bool force);
int run_dump(const std::string& store, bool json);

// "multisnap: <message>" on stderr; returns 1. After set_json_errors(true)
// (--json) also {"ok": false, "error": {"code", "errno", "message"}} on
// stdout, with the control socket's codes (docs/control.md).
int fail(const Status& s);
void set_json_errors(bool on);
// --control, else $MULTISNAP_CONTROL, else multisnap.ctl in the current directory.
std::string control_path(const std::string& flag);

}  // namespace multisnap::cli
