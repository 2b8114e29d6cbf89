// multisnap policy set|show|clear: the rolling-snapshot policy of a running
// store (docs/lifecycle.md), over the control socket.
#include <cstdio>

#include "cli/commands.h"
#include "control/control.h"

namespace multisnap::cli {

using control::Json;

namespace {
Result<Json> call(const OnlineArgs& o, const Json& request) {
  MS_ASSIGN_OR_RETURN(auto client, control::ControlClient::connect(control_path(o.control)));
  MS_ASSIGN_OR_RETURN(Json answer, client->call(request));
  MS_TRY(control::answer_status(answer));
  return answer;
}

// What show prints: the answer without "ok".
Json shown(Json answer) {
  answer.erase("ok");
  return answer;
}

void print_policy(const Json& a) {
  if (a["policy"].is_null()) {
    printf("no snapshot policy is set\n");
    return;
  }
  const Json& p = a["policy"];
  std::string keep;
  for (const char* rule : {"last", "hourly", "daily", "weekly", "monthly"}) {
    uint64_t n = p[std::string("keep_") + rule].get<uint64_t>();
    if (n == 0) continue;
    keep += (keep.empty() ? "" : ", ") + std::string(rule) + " " + std::to_string(n);
  }
  printf("policy     a snapshot every %s named %s-<UTC time>; keep %s\n", p["every"].get<std::string>().c_str(),
         p["prefix"].get<std::string>().c_str(), keep.c_str());
  printf("on full    %s\n", p["on_full"].get<std::string>() == "error"
                                 ? "error (writes that need a copy fail with ENOSPC)"
                                 : "delete-oldest (the oldest automatic snapshot is deleted to make room)");
  printf("next       %s\n", a["next_due"].get<std::string>().c_str());
  printf("automatic  %llu snapshot(s)\n", static_cast<unsigned long long>(a["automatic_snapshots"].get<uint64_t>()));
}
}  // namespace

int run_policy_set(const OnlineArgs& o, const PolicyArgs& a) {
  Json req{{"command", "policy-set"}};
  if (!a.every.empty()) req["every"] = a.every;
  if (!a.prefix.empty()) req["prefix"] = a.prefix;
  if (!a.on_full.empty()) req["on_full"] = a.on_full;
  struct Keep {
    const char* key;
    const char* flag;
    int64_t value;
  };
  for (Keep k : {Keep{"keep_last", "--keep-last", a.keep_last}, Keep{"keep_hourly", "--keep-hourly", a.keep_hourly},
                 Keep{"keep_daily", "--keep-daily", a.keep_daily}, Keep{"keep_weekly", "--keep-weekly", a.keep_weekly},
                 Keep{"keep_monthly", "--keep-monthly", a.keep_monthly}}) {
    if (k.value == PolicyArgs::kNotGiven) continue;
    if (k.value < 0) return fail(make_error(Code::kInvalidArgument, "{} must be 0 or more", k.flag));
    req[k.key] = static_cast<uint64_t>(k.value);
  }
  auto r = call(o, req);
  if (!r.is_ok()) return fail(r.status());
  if (o.json) printf("%s\n", shown(*r).dump(2).c_str());
  else print_policy(*r);
  return 0;
}

int run_policy_show(const OnlineArgs& o) {
  auto r = call(o, {{"command", "policy-show"}});
  if (!r.is_ok()) return fail(r.status());
  if (o.json) printf("%s\n", shown(*r).dump(2).c_str());
  else print_policy(*r);
  return 0;
}

int run_policy_clear(const OnlineArgs& o) {
  auto r = call(o, {{"command", "policy-clear"}});
  if (!r.is_ok()) return fail(r.status());
  bool had = r->value("cleared", false);
  if (o.json) printf("%s\n", shown(*r).dump(2).c_str());
  else printf(had ? "policy cleared; automatic snapshots taken so far stay\n" : "no snapshot policy was set\n");
  return 0;
}

}  // namespace multisnap::cli
