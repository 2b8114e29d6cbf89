// Rolling snapshots by policy (docs/lifecycle.md): what a policy is, how it
// is kept in the store (property 1, compact JSON), when the next automatic
// snapshot is due and which automatic snapshots the grandfather-father-son
// rules prune. Pure functions of their arguments: no clock, no engine, no
// I/O, so a week of snapshots is simulated in milliseconds. The daemon
// (src/daemon/policy_runner.h) applies them.
//
// Times are whole seconds since the Unix epoch, UTC.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace multisnap::policy {

// The store property that holds the policy (docs/format.md, "Properties").
constexpr uint64_t kPropertyId = 1;

enum class OnFull { kError, kDeleteOldest };

struct Policy {
  uint64_t every = 3600;  // seconds between automatic snapshots
  // Grandfather-father-son rules; 0 = the rule keeps nothing by itself.
  uint32_t keep_last = 0, keep_hourly = 0, keep_daily = 0, keep_weekly = 0, keep_monthly = 0;
  std::string prefix = "auto";
  OnFull on_full = OnFull::kError;
  int64_t set_at = 0;     // when `policy set` ran: the first snapshot is due `every` later
  uint64_t first_id = 1;  // the lowest snapshot ID this policy may have made
};

// Limits that keep the property under its 254 bytes.
constexpr uint32_t kMaxKeep = 1000000;
constexpr uint64_t kMaxEvery = 366ull * 86400;
constexpr size_t kMaxPrefix = 47;  // + "-YYYYMMDDTHHMMSSZ" = 64, the longest snapshot name

// kInvalidArgument with one sentence naming the field.
Status validate(const Policy& p);

// The property value: {"v":1,"every":300,"hourly":24,...} (rules that keep
// nothing left out; docs/lifecycle.md lists the fields). from_property refuses what validate() refuses and unknown
// versions.
std::string to_property(const Policy& p);
Result<Policy> from_property(std::string_view text);

// "30s", "5m", "1h", "1d", "2w" (a bare number is seconds); 1 s to 366 days.
Result<uint64_t> parse_duration(std::string_view text);
// The shortest exact form: 300 -> "5m", 90 -> "90s".
std::string format_duration(uint64_t seconds);
std::string_view on_full_name(OnFull f);
Result<OnFull> parse_on_full(std::string_view text);

// PREFIX-YYYYMMDDTHHMMSSZ (ISO 8601 basic, UTC), e.g. auto-20261201T091500Z.
std::string snapshot_name(std::string_view prefix, int64_t t);
// The time in a name of exactly that form with this prefix; nullopt otherwise.
std::optional<int64_t> parse_snapshot_name(std::string_view prefix, std::string_view name);

struct Snapshot {  // what the policy needs to know of a live snapshot
  uint64_t id = 0;
  std::string name;
};
struct AutoSnapshot {
  uint64_t id = 0;
  int64_t time = 0;  // from its name: when the policy took it
};

// The snapshots the policy made: named PREFIX-<time> with its prefix and
// an ID of at least first_id. In ID order (the order of `all` need not be).
std::vector<AutoSnapshot> automatic(const Policy& p, const std::vector<Snapshot>& all);

// When the next automatic snapshot is due: `every` after the newest
// automatic snapshot, or after set_at when there is none (or set_at is
// later). A time <= now means "take one now": one, however much was missed.
int64_t next_due(const Policy& p, const std::vector<AutoSnapshot>& autos);

// The IDs of the automatic snapshots no rule keeps, lowest first. Each rule
// walks the snapshots newest first (time, then ID): keep_last keeps the
// first N; keep_hourly keeps the newest of each of the N most recent hours
// that have a snapshot, and so on for days, ISO weeks (Monday to Sunday)
// and months, all in UTC. A snapshot is kept if any rule keeps it.
std::vector<uint64_t> to_prune(const Policy& p, std::vector<AutoSnapshot> autos);

// Bucket numbers of time t, for the rules and the tests.
int64_t hour_of(int64_t t);
int64_t day_of(int64_t t);
int64_t week_of(int64_t t);   // weeks start on Monday
int64_t month_of(int64_t t);  // year * 12 + month - 1

}  // namespace multisnap::policy
