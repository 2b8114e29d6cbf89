// The multisnap command: argument parsing only; every subcommand lives in
// commands.h.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <string_view>

#include "cli/commands.h"
#include "util/log.h"

using namespace multisnap;
using namespace multisnap::cli;

namespace {
// CLI11 reports `multisnap frobnicate` as "A subcommand is required": name
// the word instead. Follows the words of argv down the subcommands that
// require one; options are skipped (only --log-level takes a value there).
std::string unknown_command(CLI::App& app, int argc, char** argv) {
  CLI::App* at = &app;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    std::string w = argv[i];
    if (w == "--log-level") {
      ++i;
      continue;
    }
    if (w.empty() || w[0] == '-') continue;
    if (at->get_require_subcommand_min() == 0) return {};
    CLI::App* sub = nullptr;
    for (CLI::App* c : at->get_subcommands([](CLI::App*) { return true; }))
      if (c->get_name() == w) sub = c;
    if (!sub) return path + w;
    path += w + " ";
    at = sub;
  }
  return {};
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"multisnap: a multi-snapshot block volume served over NBD", "multisnap"};
  app.set_version_flag("--version", std::string("multisnap ") + MULTISNAP_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // --log-level may come after the subcommand too
  std::string log_level;
  app.add_option("--log-level", log_level, "debug, info, warn, error or off (default: info for serve, warn otherwise)");

  CreateArgs ca;
  auto* create = app.add_subcommand("create", "Create a store (and a sparse origin file if ORIGIN does not exist)");
  create->add_option("ORIGIN", ca.origin, "origin file or block device")->required();
  create->add_option("STORE", ca.store, "store file or block device (created sparse if missing)")->required();
  create->add_option("--origin-size", ca.origin_size, "size of a new origin file (e.g. 10G)");
  create->add_option("--chunk-size", ca.chunk_size, "copy-on-write unit, 4K to 1M (default 64K)");
  create->add_option("--format", ca.format, "exception store: range or bitmask (default range)");
  create->add_option("--store-size", ca.store_size, "size of a new store file (default: 4 x origin + 1G, sparse)");
  create->add_option("--metadata-size", ca.metadata_size,
                     "metadata pool (default: 128 bytes per data chunk, at least 64M; metadata grows into data space "
                     "past it)");
  create->add_option("--max-store-size", ca.max_store_size,
                     "the largest size `multisnap grow` may take the store to (default: 16 x the store size, at most "
                     "64T; the room costs about 0.1% of the store on a block device, none on a sparse file)");
  create->add_flag("--preallocate", ca.preallocate,
                   "allocate the whole store file on its filesystem now (fallocate) instead of as chunks are used");
  create->add_flag("--force", ca.force, "overwrite an existing store");

  ServeArgs sa;
  auto* serve = app.add_subcommand("serve", "Serve the origin and every snapshot over NBD");
  serve->add_option("STORE", sa.store, "the store")->required();
  serve->add_option("--nbd", sa.nbd,
                    "unix:PATH, tcp:HOST:PORT (repeatable) or stdio (one client on stdin/stdout); default "
                    "unix:multisnap.sock, or only the sockets systemd passes (LISTEN_FDS)");
  serve->add_option("--control", sa.control,
                    "control socket (default $MULTISNAP_CONTROL or multisnap.ctl; with --nbd stdio or socket "
                    "activation: none unless given here or passed by systemd as 'control')");
  serve->add_option("--tls", sa.tls,
                    "off, on (STARTTLS offered) or require (nothing else before STARTTLS); default require "
                    "when credentials are given, else off");
  serve->add_option("--tls-certificates", sa.tls_certificates,
                    "directory with ca-cert.pem, server-cert.pem, server-key.pem (as nbdkit and qemu-nbd)");
  serve->add_option("--tls-psk", sa.tls_psk, "PSK file of username:hexkey lines (psktool)");
  serve->add_flag("--tls-verify-peer", sa.tls_verify_peer,
                  "with --tls-certificates: require client certificates signed by ca-cert.pem");
  serve->add_option("--cache-size", sa.cache_size, "metadata cache (default 64M)");
  serve->add_option("--copy-slots", sa.copy_slots, "chunks copied at once (default: 16 MiB of chunks, 8 to 64 or 4 MiB of chunks)");
  serve->add_option("--handshake-timeout", sa.handshake_timeout,
                    "seconds an NBD client may take to finish its handshake (default 10, 0 = no limit)");
  serve->add_flag("--read-only-snapshots", sa.read_only_snapshots, "refuse writes to snapshots");
  serve->add_flag("--buffered-copies", sa.buffered_copies,
                  "write copies to the store through the page cache (default: O_DIRECT where the file system allows)");
  serve->add_flag("--no-mapped-copies", sa.no_mapped_copies,
                  "read each copy into a buffer (default: written from the origin's mapped page cache when there)");
  serve->add_flag("--no-inline-origin-writes", sa.no_inline_origin_writes,
                  "make the engine thread's origin writes through io_uring (default: it makes those of whole "
                  "pages up to 64 KiB itself, which is faster on ext4)");
  serve->add_flag("--whole-origin-writes", sa.whole_origin_writes,
                  "write each request to the origin in one call (default: 64 KiB pieces, which keep later small "
                  "writes cheap on ext4)");
  serve->add_flag("--use-older-commit", sa.use_older_commit,
                  "open the newest intact commit when both copies of a newer one are damaged (loses its changes)");
  serve->add_option("--origin", sa.origin, "origin path, if it moved since create");
  serve->add_option("--metrics", sa.metrics,
                    "serve Prometheus metrics over HTTP at tcp:HOST:PORT/metrics (HOST empty: 127.0.0.1)");
  serve->add_flag("--save", sa.save, "with --origin: record PATH as the store's origin");
  serve->add_flag("--force", sa.force,
                  "serve an origin that is neither the recorded file nor of the recorded size");

  OnlineArgs oa;
  auto add_online = [&](CLI::App* cmd) {
    cmd->add_option("--control", oa.control, "control socket (default $MULTISNAP_CONTROL or multisnap.ctl)");
    cmd->add_flag("--json", oa.json, "print JSON");
  };
  auto* snapshot = app.add_subcommand("snapshot", "Create, delete and list snapshots of a running store");
  snapshot->require_subcommand(1);
  snapshot->fallthrough();
  std::string of, name;
  std::vector<std::string> targets;
  bool force = false;
  auto* screate = snapshot->add_subcommand("create", "Take a snapshot; prints its ID");
  screate->add_option("--of", of, "snapshot to take a snapshot of (ID or name; default: the origin)");
  auto* name_opt = screate->add_option("--name", name, "a name for it: 1-64 of letters, digits, . _ - : @ +");
  add_online(screate);
  auto* sdelete = snapshot->add_subcommand(
      "delete", "Delete snapshots (several: all or none, in one commit); their space is reclaimed in the background");
  sdelete->add_option("SNAPSHOT", targets, "IDs or names")->required();
  sdelete->add_flag("--force", force, "disconnect their NBD clients first");
  add_online(sdelete);
  auto* slist = snapshot->add_subcommand("list", "List the snapshots");
  bool list_space = false, list_progress = false;
  slist->add_flag("--space", list_space,
                  "add EXCLUSIVE (what deleting the snapshot alone frees) and SHARED (what it reads that other "
                  "snapshots read too): a pass over all metadata");
  slist->add_flag("--progress", list_progress, "with --space: show the pass's progress on standard error");
  add_online(slist);
  auto* status = app.add_subcommand("status", "Show the state of a running store");
  add_online(status);

  SendArgs send_args;
  auto* send = app.add_subcommand("send", "Write a replication stream of a snapshot (full, or --from a base)");
  send->add_option("SNAPSHOT", send_args.snapshot, "ID or name of the snapshot to send")->required();
  send->add_option("--from", send_args.from, "base snapshot: send only what differs from it (incremental)");
  send->add_option("--output", send_args.output, "write the stream to FILE (default: standard output)");
  send->add_flag("--compress", send_args.compress, "compress data records with zstd");
  send->add_flag("--progress", send_args.progress, "show progress on standard error");
  add_online(send);
  ReceiveArgs recv_args;
  auto* receive = app.add_subcommand("receive", "Apply a replication stream; prints the new snapshot's ID");
  receive->add_option("--input", recv_args.input, "read the stream from FILE (default: standard input)");
  receive->add_option("--name", recv_args.name, "name the new snapshot (default: the sent snapshot's name)");
  receive->add_flag("--progress", recv_args.progress, "show progress on standard error");
  receive->add_flag("--abort", recv_args.abort, "undo an interrupted receive instead");
  add_online(receive);

  std::string rollback_to;
  bool rollback_force = false, rollback_progress = false;
  std::string grow_size, grow_store_path;
  auto* grow = app.add_subcommand("grow", "Give a store more space: extend its file (or take a grown block device's size)");
  grow->add_option("--store-size", grow_size,
                   "the store's new size (default: the size its file or device has now)");
  grow->add_option("--store", grow_store_path, "grow this store file offline (it must not be served)");
  add_online(grow);
  auto* rollback = app.add_subcommand("rollback", "Make the origin what a snapshot holds (every snapshot stays as it is)");
  rollback->add_option("SNAPSHOT", rollback_to, "ID or name")->required();
  rollback->add_flag("--force", rollback_force, "disconnect the origin's NBD clients first");
  rollback->add_flag("--progress", rollback_progress, "show progress on standard error");
  add_online(rollback);
  PolicyArgs pa;
  auto* policy = app.add_subcommand("policy", "Set, show or clear the rolling-snapshot policy of a running store");
  policy->require_subcommand(1);
  policy->fallthrough();
  auto* pset = policy->add_subcommand("set", "Take a snapshot every DURATION and prune them by the --keep-* rules");
  pset->add_option("--every", pa.every, "interval: 30s, 5m, 1h, 1d (default 1h)");
  pset->add_option("--keep-last", pa.keep_last, "keep the newest N automatic snapshots");
  pset->add_option("--keep-hourly", pa.keep_hourly, "keep the newest of each of the last N hours");
  pset->add_option("--keep-daily", pa.keep_daily, "keep the newest of each of the last N days");
  pset->add_option("--keep-weekly", pa.keep_weekly, "keep the newest of each of the last N weeks");
  pset->add_option("--keep-monthly", pa.keep_monthly, "keep the newest of each of the last N months");
  pset->add_option("--prefix", pa.prefix, "name automatic snapshots PREFIX-<UTC time> (default auto)");
  pset->add_option("--on-full", pa.on_full,
                   "error (default): a full store fails writes; delete-oldest: delete the oldest automatic snapshot");
  add_online(pset);
  auto* pshow = policy->add_subcommand("show", "Show the policy and when the next snapshot is due");
  add_online(pshow);
  auto* pclear = policy->add_subcommand("clear", "Stop taking and pruning automatic snapshots (they stay)");
  add_online(pclear);

  std::string store;
  bool json = false;
  std::string set_origin_path;
  bool set_origin_force = false;
  auto* set_origin = app.add_subcommand("set-origin", "Record where the origin of a store that is not being served is now");
  set_origin->add_option("STORE", store, "the store")->required();
  set_origin->add_option("ORIGIN", set_origin_path, "the origin's path now")->required();
  set_origin->add_flag("--force", set_origin_force,
                       "record it even if it is neither the recorded file nor of the recorded size");
  auto* check = app.add_subcommand("check", "Verify all metadata of a store that is not being served");
  check->add_option("STORE", store, "the store")->required();
  check->add_flag("--json", json, "print JSON");
  auto* dump = app.add_subcommand("dump", "Print every snapshot and mapping of a store that is not being served");
  dump->add_option("STORE", store, "the store")->required();
  dump->add_flag("--json", json, "print JSON");

  bool json_wanted = false;
  for (int i = 1; i < argc; ++i) json_wanted |= std::string_view(argv[i]) == "--json";
  set_json_errors(json_wanted);
  if (std::string word = unknown_command(app, argc, argv); !word.empty()) {
    fail(make_error(Code::kInvalidArgument, "unknown command '{}' (see --help)", word));
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    fail(make_error(Code::kInvalidArgument, "{} (see --help)", e.what()));
    return 2;
  }
  if (name_opt->count() > 0 && name.empty()) {
    fail(make_error(Code::kInvalidArgument, "--name must be 1-64 characters; leave it out for a snapshot without a name"));
    return 2;
  }
  LogLevel level = serve->parsed() ? LogLevel::kInfo : LogLevel::kWarn;
  if (!log_level.empty() && !parse_log_level(log_level, &level)) {
    fprintf(stderr, "multisnap: --log-level must be debug, info, warn, error or off\n");
    return 2;
  }
  set_log_level(level);

  // A client command reads answers a server wrote: one of an unexpected
  // shape that slips past a check must end in a message, not std::terminate.
  auto dispatch = [&]() -> int {
    if (create->parsed()) return run_create(ca);
    if (serve->parsed()) return run_serve(sa);
    if (screate->parsed()) return run_snapshot_create(oa, of, name);
    if (sdelete->parsed()) return run_snapshot_delete(oa, targets, force);
    if (slist->parsed()) return run_snapshot_list(oa, list_space, list_progress);
    if (status->parsed()) return run_status(oa);
    if (send->parsed()) return run_send(oa, send_args);
    if (grow->parsed()) return run_grow(oa, grow_size, grow_store_path);
    if (rollback->parsed()) return run_rollback(oa, rollback_to, rollback_force, rollback_progress);
    if (receive->parsed()) return run_receive(oa, recv_args);
    if (pset->parsed()) return run_policy_set(oa, pa);
    if (pshow->parsed()) return run_policy_show(oa);
    if (pclear->parsed()) return run_policy_clear(oa);
    if (check->parsed()) return run_check(store, json);
    if (set_origin->parsed()) return run_set_origin(store, set_origin_path, set_origin_force);
    if (dump->parsed()) return run_dump(store, json);
    return 2;
  };
  try {
    return dispatch();
  } catch (const std::exception& e) {
    fail(make_error(Code::kIoError, "unexpected error: {}", e.what()));
    return 1;
  }
}
