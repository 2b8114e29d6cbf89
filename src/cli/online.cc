// Commands that talk to a running `multisnap serve` over its control socket.
#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "control/control.h"
#include "util/units.h"

namespace multisnap::cli {

using control::Json;

std::string control_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = getenv("MULTISNAP_CONTROL"); env && *env) return env;
  return "multisnap.ctl";
}

int fail(const Status& s) {
  fprintf(stderr, "multisnap: %s\n", s.to_string().c_str());
  return 1;
}

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

int run_snapshot_delete(const OnlineArgs& o, const std::string& snapshot, bool force) {
  auto r = call(o, {{"command", "snapshot-delete"}, {"snapshot", snapshot_ref(snapshot)}, {"force", force}});
  if (!r.is_ok()) return fail(r.status());
  if (o.json) {
    printf("%s\n", r->dump(2).c_str());
  } else {
    uint64_t dropped = r->value("disconnected", 0);
    printf("deleted snapshot %llu", static_cast<unsigned long long>((*r)["deleted"].get<uint64_t>()));
    if (dropped) printf(" (disconnected %llu client%s)", static_cast<unsigned long long>(dropped), dropped == 1 ? "" : "s");
    printf("; its space is reclaimed in the background\n");
  }
  return 0;
}

int run_snapshot_list(const OnlineArgs& o) {
  // The answer is streamed and says "ok" last: a list that failed half-way
  // is an error here, never a short list.
  auto r = call(o, {{"command", "snapshot-list"}});
  if (!r.is_ok()) return fail(r.status());
  if (!r->contains("snapshots") || !r->at("snapshots").is_array())
    return fail(
        make_error(Code::kIoError, "malformed snapshot-list answer from the control socket"));
  const Json& list = r->at("snapshots");
  if (o.json) {
    printf("%s\n", list.dump(2).c_str());
    return 0;
  }
  printf("%-10s %-24s %-8s %-24s %s\n", "ID", "NAME", "OF", "CREATED", "EXPORT");
  for (const Json& s : list) {
    std::string of = s["of"].is_string() ? s["of"].get<std::string>() : std::to_string(s["of"].get<uint64_t>());
    printf("%-10llu %-24s %-8s %-24s %s\n", static_cast<unsigned long long>(s["id"].get<uint64_t>()),
           s["name"].is_null() ? "-" : s["name"].get<std::string>().c_str(), of.c_str(),
           s["created"].get<std::string>().c_str(), s["export"].get<std::string>().c_str());
  }
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
  printf("data       %s of %s used (%.1f%%)\n", format_size(du).c_str(), format_size(dt).c_str(), pct(du, dt));
  printf("metadata   %s of %s used (%.1f%%)\n", format_size(mu).c_str(), format_size(mt).c_str(), pct(mu, mt));
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
