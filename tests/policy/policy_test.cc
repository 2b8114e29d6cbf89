// The policy's pure logic: durations, names, the stored form, the schedule
// and grandfather-father-son pruning, with simulated time.
#include "policy/policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

namespace multisnap::policy {
namespace {

// 2026-11-30T00:02:30Z, a Monday, a little after midnight.
constexpr int64_t kMonday = 1795996800 + 150;

// What the daemon's policy thread does, over a list of live snapshots
// instead of an engine: at each wake-up, take one snapshot if due, then
// prune. A "restart" is a new Sim built from the stored property and the
// live snapshots alone.
struct Sim {
  Policy p;
  std::vector<Snapshot> live;
  uint64_t next_id = 1;
  int taken = 0;

  void manual(const std::string& name) { live.push_back({next_id++, name}); }
  void tick(int64_t now) {
    if (now >= next_due(p, automatic(p, live))) {
      live.push_back({next_id++, snapshot_name(p.prefix, now)});
      ++taken;
    }
    for (uint64_t id : to_prune(p, automatic(p, live)))
      live.erase(std::find_if(live.begin(), live.end(), [&](const Snapshot& s) { return s.id == id; }));
  }
  // The clock runs from `from` to `to` (inclusive) in steps of `step`.
  void run(int64_t from, int64_t to, int64_t step) {
    for (int64_t t = from; t <= to; t += step) tick(t);
  }
  std::set<std::string> names() const {
    std::set<std::string> out;
    for (const Snapshot& s : live) out.insert(s.name);
    return out;
  }
  std::set<int64_t> auto_times() const {
    std::set<int64_t> out;
    for (const AutoSnapshot& a : automatic(p, live)) out.insert(a.time);
    return out;
  }
};

Policy weekly_policy() {
  Policy p;
  p.every = 300;
  p.keep_hourly = 24;
  p.keep_daily = 7;
  p.set_at = kMonday;
  p.first_id = 1;
  return p;
}

// The newest of each of the last `n` hours (days) of a run in which every
// hour (day) has snapshots: computed from the list of times taken, not
// with to_prune's walk.
std::set<int64_t> expected_week(const std::vector<int64_t>& taken) {
  std::map<int64_t, int64_t> newest_in_hour, newest_in_day;
  for (int64_t t : taken) {
    newest_in_hour[t / 3600] = std::max(newest_in_hour[t / 3600], t);
    newest_in_day[t / 86400] = std::max(newest_in_day[t / 86400], t);
  }
  int64_t last = taken.back();
  std::set<int64_t> out;
  for (auto [h, t] : newest_in_hour)
    if (h > last / 3600 - 24) out.insert(t);
  for (auto [d, t] : newest_in_day)
    if (d > last / 86400 - 7) out.insert(t);
  return out;
}

TEST(PolicyDuration, ParsesAndFormats) {
  EXPECT_EQ(*parse_duration("30s"), 30u);
  EXPECT_EQ(*parse_duration("5m"), 300u);
  EXPECT_EQ(*parse_duration("1h"), 3600u);
  EXPECT_EQ(*parse_duration("1d"), 86400u);
  EXPECT_EQ(*parse_duration("2w"), 14 * 86400u);
  EXPECT_EQ(*parse_duration("45"), 45u);
  for (const char* bad : {"", "s", "0s", "5x", "-5m", "1.5h", "5 m", "367d", "99999999999"})
    EXPECT_EQ(parse_duration(bad).status().code(), Code::kInvalidArgument) << bad;
  EXPECT_EQ(format_duration(300), "5m");
  EXPECT_EQ(format_duration(90), "90s");
  EXPECT_EQ(format_duration(86400), "1d");
  EXPECT_EQ(format_duration(7200), "2h");
}

TEST(PolicyNames, Iso8601BasicUtcRoundTrips) {
  int64_t t = 1796116500;  // 2026-12-01T09:15:00Z
  EXPECT_EQ(snapshot_name("auto", t), "auto-20261201T091500Z");
  EXPECT_EQ(parse_snapshot_name("auto", "auto-20261201T091500Z"), t);
  EXPECT_EQ(parse_snapshot_name("auto", "auto-20261201T091500"), std::nullopt);
  EXPECT_EQ(parse_snapshot_name("auto", "auto-20261301T091500Z"), std::nullopt);  // month 13
  EXPECT_EQ(parse_snapshot_name("auto", "auto-20260231T091500Z"), std::nullopt);  // 31 February
  EXPECT_EQ(parse_snapshot_name("auto", "xauto-20261201T091500Z"), std::nullopt);
  EXPECT_EQ(parse_snapshot_name("auto", "hourly-20261201T091500Z"), std::nullopt);
  EXPECT_EQ(parse_snapshot_name("au", "auto-20261201T091500Z"), std::nullopt);
  EXPECT_EQ(parse_snapshot_name("a-b", "a-b-20261201T091500Z"), t);
}

TEST(PolicyBuckets, WeeksStartOnMondayUtc) {
  EXPECT_EQ(week_of(kMonday), week_of(kMonday + 6 * 86400 + 86000));  // to Sunday night
  EXPECT_EQ(week_of(kMonday) + 1, week_of(kMonday + 7 * 86400));
  EXPECT_EQ(week_of(kMonday) - 1, week_of(kMonday - 151));  // Sunday 23:59:59
  EXPECT_EQ(month_of(1796116500), 2026 * 12 + 11);
}

TEST(PolicyProperty, RoundTripsWithinTheLimit) {
  Policy p = weekly_policy();
  p.keep_last = 3;
  p.on_full = OnFull::kDeleteOldest;
  p.prefix = "nightly";
  p.first_id = 42;
  auto back = from_property(to_property(p));
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(to_property(*back), to_property(p));
  EXPECT_EQ(back->every, 300u);
  EXPECT_EQ(back->keep_daily, 7u);
  EXPECT_EQ(back->on_full, OnFull::kDeleteOldest);
  // The largest policy still fits the property's 254 bytes.
  Policy big;
  big.every = kMaxEvery;
  big.keep_last = big.keep_hourly = big.keep_daily = big.keep_weekly = big.keep_monthly = kMaxKeep;
  big.prefix = std::string(kMaxPrefix, 'x');
  big.on_full = OnFull::kDeleteOldest;
  big.set_at = INT64_MAX;
  big.first_id = 1ull << 32;
  ASSERT_TRUE(validate(big).is_ok());
  EXPECT_LE(to_property(big).size(), 254u);
  EXPECT_EQ(snapshot_name(big.prefix, 1796116500).size(), 64u);
}

TEST(PolicyProperty, RefusesWrongTypesAndValues) {
  for (const char* bad : {"", "[]", "{\"v\":2,\"every\":5,\"last\":1,\"prefix\":\"a\"}",
                          "{\"v\":1,\"every\":\"5\",\"last\":1,\"prefix\":\"a\"}",
                          "{\"v\":1,\"every\":5,\"last\":-1,\"prefix\":\"a\"}",
                          "{\"v\":1,\"every\":5,\"last\":1,\"prefix\":7}",
                          "{\"v\":1,\"every\":5,\"last\":1,\"prefix\":\"a b\"}",
                          "{\"v\":1,\"every\":5,\"prefix\":\"a\"}",
                          "{\"v\":1,\"every\":5,\"last\":1,\"prefix\":\"a\",\"on_full\":\"panic\"}"})
    EXPECT_FALSE(from_property(bad).is_ok()) << bad;
  Policy p = weekly_policy();
  p.keep_hourly = p.keep_daily = 0;
  EXPECT_EQ(validate(p).code(), Code::kInvalidArgument);  // keeps nothing
}

TEST(PolicySchedule, FirstSnapshotIsDueOneIntervalAfterSet) {
  Policy p = weekly_policy();
  EXPECT_EQ(next_due(p, {}), kMonday + 300);
  EXPECT_EQ(next_due(p, {{1, kMonday + 900}}), kMonday + 1200);
  EXPECT_EQ(next_due(p, {{1, kMonday - 900}}), kMonday + 300);  // older than the policy
}

TEST(PolicyPrune, WeekOfFiveMinuteSnapshotsKeepsHourly24Daily7) {
  Sim sim{weekly_policy()};
  sim.run(kMonday, kMonday + 7 * 86400, 60);  // wakes every minute
  std::vector<int64_t> taken;
  for (int64_t t = kMonday + 300; t <= kMonday + 7 * 86400; t += 300) taken.push_back(t);
  EXPECT_EQ(sim.taken, static_cast<int>(taken.size()));  // 2016: on time, none twice
  std::set<int64_t> want = expected_week(taken);
  EXPECT_EQ(sim.auto_times(), want);
  // By hand: 24 hours + 7 days, minus the newest (both the newest hour's and
  // day's) and Sunday's 23:57:30 (in the last 24 hours too).
  EXPECT_EQ(want.size(), 29u);
  EXPECT_TRUE(want.count(kMonday + 7 * 86400));
  // The last 7 days with snapshots are Tuesday to the next Monday.
  EXPECT_TRUE(want.count(kMonday + 2 * 86400 - 300));  // Tuesday's last, 23:57:30
  EXPECT_FALSE(want.count(kMonday + 2 * 86400 - 600));
  EXPECT_FALSE(want.count(kMonday + 86400 - 300));  // Monday's last: 8 days back
}

TEST(PolicyPrune, KeepLastOnlyKeepsExactlyTheNewestN) {
  Policy p;
  p.every = 2;
  p.keep_last = 3;
  p.set_at = kMonday;
  Sim sim{p};
  sim.run(kMonday, kMonday + 10, 1);
  EXPECT_EQ(sim.taken, 5);
  EXPECT_EQ(sim.auto_times(), (std::set<int64_t>{kMonday + 6, kMonday + 8, kMonday + 10}));
}

TEST(PolicyPrune, ManualSnapshotsAreNeverPruned) {
  Sim sim{weekly_policy()};
  // Made by hand before the policy, one of them named like an automatic one.
  sim.manual(snapshot_name("auto", kMonday - 3600));
  sim.manual("before-upgrade");
  sim.p.first_id = sim.next_id;
  sim.run(kMonday, kMonday + 2 * 86400, 300);
  sim.manual("nightly");
  sim.manual(snapshot_name("hourly", kMonday));  // another prefix
  sim.run(kMonday + 2 * 86400 + 300, kMonday + 7 * 86400, 300);
  auto names = sim.names();
  for (const std::string& n : {snapshot_name("auto", kMonday - 3600), std::string("before-upgrade"),
                               std::string("nightly"), snapshot_name("hourly", kMonday)})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(sim.live.size(), 29u + 4u);
}

TEST(PolicyRestart, ReloadingThePolicyAndSnapshotsChangesNothing) {
  Sim straight{weekly_policy()};
  straight.run(kMonday, kMonday + 7 * 86400, 60);

  Sim before{weekly_policy()};
  int64_t stop = kMonday + 3 * 86400 + 4320;  // a wake-up, between two snapshots
  before.run(kMonday, stop, 60);
  // serve restarts: the policy comes back from the property, the schedule
  // from the snapshots' names.
  auto p = from_property(to_property(before.p));
  ASSERT_TRUE(p.is_ok());
  Sim after{*p, before.live, before.next_id};
  after.run(stop + 60, kMonday + 7 * 86400, 60);
  EXPECT_EQ(after.names(), straight.names());
  EXPECT_EQ(before.taken + after.taken, straight.taken);
}

TEST(PolicyRestart, AfterDowntimeOneSnapshotNotABurst) {
  Sim sim{weekly_policy()};
  sim.run(kMonday, kMonday + 86400, 300);
  int taken = sim.taken;
  // Down for five hours and a bit: sixty periods missed.
  int64_t back = kMonday + 86400 + 5 * 3600 + 17;
  sim.tick(back);
  EXPECT_EQ(sim.taken, taken + 1);
  EXPECT_TRUE(sim.auto_times().count(back));
  sim.tick(back + 1);
  sim.tick(back + 299);
  EXPECT_EQ(sim.taken, taken + 1);
  sim.tick(back + 300);  // then every interval from there
  EXPECT_EQ(sim.taken, taken + 2);
}

TEST(PolicyPrune, GfsRulesCountBucketsWithSnapshots) {
  Policy p;
  p.every = 3600;
  p.keep_daily = 2;
  p.keep_monthly = 2;
  // Two snapshots a day on three days of November, one on 1 December.
  const int64_t nov28 = 1795824000;  // 2026-11-28T00:00:00Z
  std::vector<AutoSnapshot> autos;
  uint64_t id = 1;
  for (int d = 0; d < 3; ++d)
    for (int64_t h : {6, 18}) autos.push_back({id++, nov28 + d * 86400 + h * 3600});
  autos.push_back({id++, nov28 + 3 * 86400 + 3600});
  // Kept: 1 Dec (daily, monthly), 30 Nov 18:00 (daily, November's newest).
  EXPECT_EQ(to_prune(p, autos), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
}

}  // namespace
}  // namespace multisnap::policy
