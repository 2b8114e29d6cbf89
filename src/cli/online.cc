// Commands that talk to a running `multisnap serve` over its control socket.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "control/control.h"
#include "control/requests.h"
#include "control/snapshot_list.h"
#include "util/units.h"

namespace multisnap::cli {

using control::Json;

std::string control_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = getenv("MULTISNAP_CONTROL"); env && *env) return env;
  return "multisnap.ctl";
}

namespace {
bool json_errors = false;
}

void set_json_errors(bool on) { json_errors = on; }

namespace {
// fail(), with more fields in the --json error document.
int fail_with(const Status& s, const Json& extra) {
  fprintf(stderr, "multisnap: %s\n", s.to_string().c_str());
  if (json_errors) {
    Json answer = control::error_answer(s);
    Json out{{"ok", false}, {"error", answer["error"]}};
    for (const auto& [key, value] : extra.items()) out[key] = value;
    printf("%s\n", out.dump(2).c_str());
  }
  return 1;
}

// " (disconnected N clients)" when a --force delete disconnected some.
void print_disconnected(uint64_t dropped) {
  if (dropped) printf(" (disconnected %llu client%s)", static_cast<unsigned long long>(dropped), dropped == 1 ? "" : "s");
}
}  // namespace

int fail(const Status& s) { return fail_with(s, Json::object()); }

namespace {
Result<Json> call(const OnlineArgs& o, const Json& request) {
  MS_ASSIGN_OR_RETURN(auto client, control::ControlClient::connect(control_path(o.control)));
  MS_ASSIGN_OR_RETURN(Json answer, client->call(request));
  MS_TRY(control::answer_status(answer));
  return answer;
}

Json snapshot_ref(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() <= 10)
    return Json(std::stoull(s));
  return Json(s);
}
}  // namespace

int run_snapshot_create(const OnlineArgs& o, const std::string& of, const std::string& name) {
  Json req{{"command", "snapshot-create"}};
  if (!of.empty()) req["of"] = of == "origin" ? Json("origin") : snapshot_ref(of);
  if (!name.empty()) req["name"] = name;
  auto r = call(o, req);
  if (!r.is_ok()) return fail(r.status());
  if (o.json) printf("%s\n", (*r)["snapshot"].dump(2).c_str());
  else printf("%llu\n", static_cast<unsigned long long>((*r)["snapshot"]["id"].get<uint64_t>()));
  return 0;
}

namespace {
// Several snapshots: requests of at most control::kMaxDeleteBatch references
// and well under the request size limit, each deleting all of its
// snapshots or none in one commit.
int delete_several(const OnlineArgs& o, const std::vector<std::string>& snapshots, bool force) {
  Json deleted = Json::array();
  uint64_t dropped = 0;
  auto report = [&] {
    if (o.json) {
      printf("%s\n", Json{{"ok", true}, {"deleted", deleted}, {"disconnected", dropped}}.dump(2).c_str());
    } else if (!deleted.empty()) {
      printf("deleted %zu snapshot%s:", deleted.size(), deleted.size() == 1 ? "" : "s");
      for (const Json& id : deleted) printf(" %llu", static_cast<unsigned long long>(id.get<uint64_t>()));
      print_disconnected(dropped);
      printf("; their space is reclaimed in the background\n");
    }
  };
  for (size_t i = 0; i < snapshots.size();) {
    Json batch = Json::array();
    size_t bytes = 0;
    for (; i < snapshots.size() && batch.size() < control::kMaxDeleteBatch && bytes < control::kMaxRequestBytes / 2;
         ++i) {
      batch.push_back(snapshot_ref(snapshots[i]));
      bytes += snapshots[i].size() + 4;
    }
    auto r = call(o, {{"command", "snapshot-delete"}, {"snapshots", batch}, {"force", force}});
    if (!r.is_ok()) {
      // What earlier requests deleted stays deleted: say so (with --json,
      // in the one error document).
      if (!o.json) report();
      return fail_with(r.status(), {{"deleted", deleted}});
    }
    for (const Json& id : (*r)["deleted"]) deleted.push_back(id);
    dropped += r->value("disconnected", uint64_t{0});
  }
  report();
  return 0;
}
}  // namespace

int run_snapshot_delete(const OnlineArgs& o, const std::vector<std::string>& snapshots, bool force) {
  if (snapshots.size() > 1) return delete_several(o, snapshots, force);
  const std::string& snapshot = snapshots.at(0);
  auto r = call(o, {{"command", "snapshot-delete"}, {"snapshot", snapshot_ref(snapshot)}, {"force", force}});
  if (!r.is_ok()) return fail(r.status());
  if (o.json) {
    printf("%s\n", r->dump(2).c_str());
  } else {
    uint64_t dropped = r->value("disconnected", 0);
    printf("deleted snapshot %llu", static_cast<unsigned long long>((*r)["deleted"].get<uint64_t>()));
    print_disconnected(dropped);
    printf("; its space is reclaimed in the background\n");
  }
  return 0;
}

namespace {
// --progress for `snapshot list --space`: polls status on a second
// connection while the first waits for the pass, and draws one line on
// stderr.
class SpaceProgress {
 public:
  SpaceProgress(const OnlineArgs& o, bool on) {
    if (!on) return;
    watcher_ = std::thread([this, path = control_path(o.control)] {
      auto poll = control::ControlClient::connect(path);
      if (!poll.is_ok()) return;
      while (!done_) {
        auto st = (*poll)->call({{"command", "status"}});
        if (st.is_ok() && control::answer_status(*st).is_ok() && (*st)["status"].contains("space_scan")) {
          const Json& sc = (*st)["status"]["space_scan"];
          if (sc.value("active", false)) draw(sc["done"].get<uint64_t>(), sc["total"].get<uint64_t>(), false);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
    });
  }
  // Stops polling; with a total, draws the last line, however quick it was.
  void finish(std::optional<uint64_t> total) {
    done_ = true;
    if (!watcher_.joinable()) return;
    watcher_.join();
    if (total) draw(*total, *total, true);
  }
  ~SpaceProgress() { finish(std::nullopt); }

 private:
  static void draw(uint64_t done, uint64_t total, bool final) {
    total = std::max(total, done);
    fprintf(stderr, "\rspace: %llu of %llu exceptions (%.0f%%)   ", static_cast<unsigned long long>(done),
            static_cast<unsigned long long>(total), total ? 100.0 * double(done) / double(total) : 100.0);
    if (final) fprintf(stderr, "\n");
  }
  std::atomic<bool> done_{false};
  std::thread watcher_;
};
}  // namespace

int run_snapshot_list(const OnlineArgs& o, bool space, bool progress) {
  // The answer is streamed and says "ok" last: a list that failed half-way
  // is an error here, never a short list. It can be large (about 160 bytes
  // a snapshot: 160 MB at a million), so it is parsed as it arrives (SAX,
  // control/snapshot_list.h), each snapshot formatted from a reused row and
  // no Json built for it; the output is written once "ok" is known.
  Json req{{"command", "snapshot-list"}};
  if (space) req["space"] = true;
  SpaceProgress line(o, space && progress);
  std::string out;
  if (o.json) {
    out = "[";
  } else {
    char row[512];
    if (space)
      snprintf(row, sizeof row, "%-10s %-24s %-20s %-24s %10s %10s %s\n", "ID", "NAME", "OF", "CREATED", "EXCLUSIVE",
               "SHARED", "EXPORT");
    else
      snprintf(row, sizeof row, "%-10s %-24s %-20s %-24s %s\n", "ID", "NAME", "OF", "CREATED", "EXPORT");
    out = row;
  }
  size_t listed = 0;
  std::string of, row;
  auto add = [&](const control::SnapshotRow& s) {
    if (o.json) {  // as list.dump(2) prints an element of the array
      out += listed ? ",\n  " : "\n  ";
      control::append_list_element(out, s);
    } else {
      // "origin", or the parent's ID and name: "1 (base)".
      if (s.of_origin) {
        of = "origin";
      } else {
        of = std::to_string(s.of_id);
        if (s.of_has_name) of += " (" + s.of_name + ")";
      }
      const char* name = s.has_name ? s.name.c_str() : "-";
      row.resize(s.name.size() + of.size() + s.created.size() + s.export_name.size() + 256);
      auto id = static_cast<unsigned long long>(s.id);
      int n = space ? snprintf(row.data(), row.size(), "%-10llu %-24s %-20s %-24s %10s %10s %s\n", id, name,
                               of.c_str(), s.created.c_str(), format_size(s.exclusive_bytes.value_or(0)).c_str(),
                               format_size(s.shared_bytes.value_or(0)).c_str(), s.export_name.c_str())
                    : snprintf(row.data(), row.size(), "%-10llu %-24s %-20s %-24s %s\n", id, name, of.c_str(),
                               s.created.c_str(), s.export_name.c_str());
      out.append(row.data(), static_cast<size_t>(std::max(n, 0)));
    }
    ++listed;
  };
  auto client = control::ControlClient::connect(control_path(o.control));
  if (!client.is_ok()) return fail(client.status());
  if (Status s = (*client)->send(req); !s.is_ok()) return fail(s);
  auto r = control::read_snapshot_list(**client, add);
  if (!r.is_ok()) return fail(r.status());
  std::optional<uint64_t> scanned;
  if (r->contains("space") && (*r)["space"].is_object()) scanned = (*r)["space"].value("exceptions", uint64_t{0});
  line.finish(scanned);
  if (o.json) {
    out += listed ? "\n]\n" : "]\n";
  } else if (space) {
    uint64_t pending = scanned ? (*r)["space"].value("reclaim_pending_bytes", uint64_t{0}) : 0;
    if (pending) out += "(" + format_size(pending) + " more held by deleted snapshots, being reclaimed)\n";
  }
  fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

namespace {
void print_grow(const OnlineArgs& o, const Json& g) {
  if (o.json) {
    printf("%s\n", g.dump(2).c_str());
    return;
  }
  printf("the store grew from %s to %s (%s more for data and metadata); it can grow to %s\n",
         format_size(g["old_size"]).c_str(), format_size(g["new_size"]).c_str(),
         format_size(g["added_bytes"]).c_str(), format_size(g["max_size"]).c_str());
}
}  // namespace

int run_grow(const OnlineArgs& o, const std::string& store_size, const std::string& store_path) {
  uint64_t bytes = 0;
  if (!store_size.empty()) {
    auto size = parse_size(store_size);
    if (!size.is_ok()) return fail(size.status());
    bytes = *size;
  }
  if (!store_path.empty()) {
    auto g = grow_offline(store_path, bytes);
    if (!g.is_ok()) return fail(g.status());
    print_grow(o, {{"old_size", g->old_bytes},
                   {"new_size", g->new_bytes},
                   {"added_bytes", g->added_bytes},
                   {"max_size", g->max_bytes}});
    return 0;
  }
  Json req{{"command", "grow"}};
  if (bytes) req["store_size"] = bytes;
  auto r = call(o, req);
  if (!r.is_ok()) return fail(r.status());
  print_grow(o, (*r)["grow"]);
  return 0;
}

int run_status(const OnlineArgs& o) {
  auto r = call(o, {{"command", "status"}});
  if (!r.is_ok()) return fail(r.status());
  const Json& s = (*r)["status"];
  if (o.json) {
    printf("%s\n", s.dump(2).c_str());
    return 0;
  }
  const Json& st = s["store"];
  auto pct = [](uint64_t used, uint64_t total) { return total ? 100.0 * double(used) / double(total) : 0.0; };
  uint64_t du = st["data"]["used_bytes"], dt = st["data"]["total_bytes"];
  uint64_t mu = st["metadata"]["used_bytes"], mt = st["metadata"]["total_bytes"];
  printf("origin     %s (%s)\n", s["origin"]["path"].get<std::string>().c_str(),
         format_size(s["origin"]["size"]).c_str());
  printf("store      %s: %s store, %s chunks, generation %llu\n", st["path"].get<std::string>().c_str(),
         s["format"].get<std::string>().c_str(), format_size(st["chunk_size"]).c_str(),
         static_cast<unsigned long long>(st["generation"].get<uint64_t>()));
  if (st.contains("used_size") && st.contains("max_size")) {
    uint64_t used_size = st["used_size"], max_size = st["max_size"];
    if (!st.value("growable", true))
      printf("size       %s (a store of format 2 or 3: made without room to grow)\n", format_size(used_size).c_str());
    else if (max_size > used_size)
      printf("size       %s (multisnap grow can take it to %s)\n", format_size(used_size).c_str(),
             format_size(max_size).c_str());
    else
      printf("size       %s (as large as it can grow)\n", format_size(used_size).c_str());
  }
  const Json& sp = st["space"];
  uint64_t borrowed = st["metadata"]["borrowed_bytes"];
  printf("free       %s (%s for data, %s for metadata)%s\n", format_size(sp["free_bytes"]).c_str(),
         format_size(sp["data_free_bytes"]).c_str(), format_size(sp["metadata_free_bytes"]).c_str(),
         sp["shared"].get<bool>() ? "; metadata grows into data space" : "; format 2: fixed metadata area");
  printf("data       %s of %s used (%.1f%%)\n", format_size(du).c_str(), format_size(dt).c_str(), pct(du, dt));
  printf("metadata   %s used; pool %s", format_size(mu).c_str(), format_size(mt).c_str());
  if (borrowed) printf(", plus %s of data chunks holding metadata", format_size(borrowed).c_str());
  printf("\n");
  if (sp["low"].get<bool>())
    printf("WARNING    low on space: less than %s free for data; delete snapshots or give the store more space\n",
           format_size(sp["low_threshold_bytes"]).c_str());
  printf("snapshots  %llu", static_cast<unsigned long long>(s["snapshots"].get<uint64_t>()));
  if (s.contains("snapshot_slots_free"))
    printf(" (%llu slots free)", static_cast<unsigned long long>(s["snapshot_slots_free"].get<uint64_t>()));
  printf(", %llu exceptions\n", static_cast<unsigned long long>(s["exceptions"].get<uint64_t>()));
  if (s["reclaim"]["active"].get<bool>())
    printf("reclaim    running, %.0f%% of this pass done\n", 100 * s["reclaim"]["progress"].get<double>());
  else
    printf("reclaim    idle\n");
  const Json& io = s["io"];
  printf("io         %llu reads (%s), %llu writes (%s), %llu flushes, %llu errors\n",
         static_cast<unsigned long long>(io["reads"].get<uint64_t>()), format_size(io["bytes_read"]).c_str(),
         static_cast<unsigned long long>(io["writes"].get<uint64_t>()), format_size(io["bytes_written"]).c_str(),
         static_cast<unsigned long long>(io["flushes"].get<uint64_t>()),
         static_cast<unsigned long long>(io["errors"].get<uint64_t>()));
  printf("copies     %llu chunks in %llu jobs, %llu commits\n",
         static_cast<unsigned long long>(s["copies"]["chunks"].get<uint64_t>()),
         static_cast<unsigned long long>(s["copies"]["jobs"].get<uint64_t>()),
         static_cast<unsigned long long>(s["commits"].get<uint64_t>()));
  printf("nbd        %llu clients connected; listening on", static_cast<unsigned long long>(s["nbd"]["connections"].get<uint64_t>()));
  for (const Json& a : s["nbd"]["listen"]) printf(" %s", a.get<std::string>().c_str());
  printf("\n");
  if (!s["failure"].is_null()) printf("FAILED     %s\n", s["failure"].get<std::string>().c_str());
  return 0;
}

}  // namespace multisnap::cli
