// PolicyRunner over a real engine (in memory) with an injected clock: the
// schedule and pruning through create/delete, a restart of the runner and
// the engine in the middle, clear, the on-full hook, a bad stored policy,
// and the thread waking on the injected clock.
#include "daemon/policy_runner.h"

#include <gtest/gtest.h>

#include <set>

#include "engine/engine_fixture.h"

namespace multisnap {
namespace {

using testing::EngineHarness;
using testing::EngineParams;

class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t t) : now_(t) {}
  uint64_t now_ns() override { return static_cast<uint64_t>(now_.load()) * 1000000000ull; }
  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, uint64_t) override {
    cv.wait_for(lock, std::chrono::milliseconds(2));  // the caller looks at the clock again
  }
  void set(int64_t t) { now_ = t; }

 private:
  std::atomic<int64_t> now_;
};

constexpr int64_t kT0 = 1795996800 + 150;  // Monday 2026-11-30T00:02:30Z

class PolicyRunnerTest : public ::testing::Test {
 protected:
  PolicyRunnerTest() : h_(EngineParams{}) { h_.open(); }

  std::unique_ptr<PolicyRunner> runner() {
    auto r = std::make_unique<PolicyRunner>(h_.engine(), clock_,
                                            [this](SnapshotId id) { return h_.engine().delete_snapshot(id); });
    Status s = r->start(false);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
    return r;
  }
  std::set<std::string> names() {
    std::set<std::string> out;
    auto list = h_.engine().list_snapshots();
    EXPECT_TRUE(list.is_ok());
    if (list.is_ok())
      for (const SnapshotInfo& s : *list) out.insert(s.name);
    return out;
  }
  policy::Policy weekly() {
    policy::Policy p;
    p.every = 300;
    p.keep_hourly = 24;
    p.keep_daily = 7;
    return p;
  }

  EngineHarness h_;
  FakeClock clock_{kT0};
};

TEST_F(PolicyRunnerTest, ThirtySixHoursWithARestartLeaveTheExpectedSet) {
  h_.snapshot(std::nullopt, policy::snapshot_name("auto", kT0 - 600));  // made by hand before the policy
  auto r = runner();
  ASSERT_TRUE(r->set(weekly()).is_ok());
  int64_t end = kT0 + 36 * 3600;
  for (int64_t t = kT0; t <= end; t += 60) {
    clock_.set(t);
    r->run_once();
    if (t == kT0 + 18 * 3600) {  // serve restarts: runner and engine
      h_.snapshot(std::nullopt, "manual");
      r.reset();
      h_.close();
      h_.open();
      r = runner();
    }
  }
  // Expected: every 5 minutes from kT0 + 300, pruned by the same rules.
  std::vector<policy::AutoSnapshot> taken;
  for (int64_t t = kT0 + 300; t <= end; t += 300) taken.push_back({taken.size() + 1, t});
  std::set<uint64_t> pruned;
  for (uint64_t id : policy::to_prune(weekly(), taken)) pruned.insert(id);
  std::set<std::string> want{policy::snapshot_name("auto", kT0 - 600), "manual"};
  for (const auto& a : taken)
    if (!pruned.count(a.id)) want.insert(policy::snapshot_name("auto", a.time));
  EXPECT_EQ(names(), want);
  // Ending Tuesday 12:02:30: the 24 hourly ones include both days' newest.
  EXPECT_EQ(want.size(), 2u + 24u);
  auto st = r->state();
  ASSERT_TRUE(st.is_ok());
  EXPECT_EQ(st->automatic, 24u);
  EXPECT_EQ(st->next_due, end + 300);
  r.reset();
  h_.close();
  for (auto& problem : h_.check()) ADD_FAILURE() << problem;
}

TEST_F(PolicyRunnerTest, OverdueAtStartTakesOneThenEveryInterval) {
  auto r = runner();
  policy::Policy p = weekly();
  ASSERT_TRUE(r->set(p).is_ok());
  r.reset();
  clock_.set(kT0 + 10 * 86400 + 7);  // ten days down
  r = runner();
  r->run_once();
  r->run_once();
  EXPECT_EQ(names(), (std::set<std::string>{policy::snapshot_name("auto", kT0 + 10 * 86400 + 7)}));
  EXPECT_EQ(r->state()->next_due, kT0 + 10 * 86400 + 307);
}

TEST_F(PolicyRunnerTest, ClearStopsCreatingAndPruning) {
  auto r = runner();
  policy::Policy p;
  p.every = 2;
  p.keep_last = 3;
  ASSERT_TRUE(r->set(p).is_ok());
  for (int64_t t = kT0; t <= kT0 + 10; ++t) {
    clock_.set(t);
    r->run_once();
  }
  auto before = names();
  EXPECT_EQ(before.size(), 3u);
  ASSERT_TRUE(r->clear().is_ok());
  for (int64_t t = kT0 + 11; t <= kT0 + 30; ++t) {
    clock_.set(t);
    r->run_once();
  }
  EXPECT_EQ(names(), before);
  EXPECT_FALSE(r->state()->policy.has_value());
  EXPECT_FALSE(h_.engine().property(policy::kPropertyId)->has_value());
  r.reset();
  EXPECT_FALSE(runner()->state()->policy.has_value());  // and after a restart
}

TEST_F(PolicyRunnerTest, OnFullDeleteOldestFreesTheLowestAutomaticId) {
  auto r = runner();
  policy::Policy p;
  p.every = 60;
  p.keep_last = 10;
  ASSERT_TRUE(r->set(p).is_ok());
  for (int64_t t = kT0; t <= kT0 + 180; t += 60) {
    clock_.set(t);
    r->run_once();
    if (t == kT0 + 60) h_.snapshot(std::nullopt, "manual");
  }
  EXPECT_FALSE(r->on_no_space());  // --on-full error
  p.on_full = policy::OnFull::kDeleteOldest;
  ASSERT_TRUE(r->set(p).is_ok());
  auto first = policy::snapshot_name("auto", kT0 + 60);
  EXPECT_TRUE(names().count(first));
  EXPECT_TRUE(r->on_no_space());
  r->run_once();  // the thread's pass: one snapshot goes, the oldest
  EXPECT_FALSE(names().count(first));
  EXPECT_EQ(names().size(), 3u);  // manual + 2 automatic
  EXPECT_TRUE(names().count("manual"));
  // Until none is left; then the hook says no.
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(r->on_no_space());
    r->run_once();
  }
  EXPECT_EQ(names(), (std::set<std::string>{"manual"}));
  r->on_no_space();
  r->run_once();
  EXPECT_FALSE(r->on_no_space());
}

TEST_F(PolicyRunnerTest, AnUnreadableStoredPolicyIsIgnored) {
  ASSERT_TRUE(h_.engine().set_property(policy::kPropertyId, std::string("{\"v\":1,\"every\":\"x\"}")).is_ok());
  auto r = runner();
  EXPECT_FALSE(r->state()->policy.has_value());
  clock_.set(kT0 + 86400);
  r->run_once();
  EXPECT_TRUE(names().empty());
}

TEST(PolicyRunnerThread, WakesOnTheInjectedClock) {
  EngineParams params;
  EngineHarness h(params);  // devices only: a threaded engine of our own
  EngineOptions eo;
  auto engine = Engine::open(h.origin_dev(), h.store_dev(), eo, make_sync_io_context());
  ASSERT_TRUE(engine.is_ok());
  FakeClock clock(kT0);
  PolicyRunner r(**engine, clock, [&](SnapshotId id) { return (*engine)->delete_snapshot(id); });
  ASSERT_TRUE(r.start(true).is_ok());
  policy::Policy p;
  p.every = 3600;
  p.keep_last = 2;
  ASSERT_TRUE(r.set(p).is_ok());
  auto count = [&] { return (*engine)->list_snapshots()->size(); };
  // The count it saw last (not a second look: the runner may act between).
  auto wait_for = [&](size_t n) {
    size_t seen = count();
    for (int i = 0; i < 5000 && seen != n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      seen = count();
    }
    return seen;
  };
  // The runner took this hour's snapshot (it moves next_due after taking
  // it, before pruning): until then the count is the last hour's.
  auto wait_taken = [&](int64_t next_due) {
    for (int i = 0; i < 5000 && r.state()->next_due != next_due; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(count(), 0u);  // not due for an hour
  for (int hour = 1; hour <= 4; ++hour) {
    clock.set(kT0 + hour * 3600);
    wait_taken(static_cast<int64_t>(kT0 + (hour + 1) * 3600));
    EXPECT_EQ(wait_for(std::min(hour, 2)), static_cast<size_t>(std::min(hour, 2))) << "hour " << hour;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(r.state()->next_due, kT0 + (hour + 1) * 3600);
  }
  auto list = (*engine)->list_snapshots();
  EXPECT_EQ(list->back().name, policy::snapshot_name("auto", kT0 + 4 * 3600));
  r.stop();
}

}  // namespace
}  // namespace multisnap
