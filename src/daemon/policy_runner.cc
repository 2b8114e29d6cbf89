#include "daemon/policy_runner.h"

#include <algorithm>

#include "util/clock.h"
#include "util/log.h"

namespace multisnap {

using policy::AutoSnapshot;
using policy::OnFull;
using policy::Policy;

namespace {
class SystemClock : public Clock {
 public:
  uint64_t now_ns() override { return wall_clock_ns(); }
  void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, uint64_t deadline_ns) override {
    // At most a minute at a time, so a wall clock set forward is noticed.
    auto deadline = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(deadline_ns)));
    cv.wait_until(lock, std::min(deadline, std::chrono::system_clock::now() + std::chrono::minutes(1)));
  }
};

// After a failed snapshot create, try again this much later (or at the
// next interval, if sooner).
constexpr int64_t kRetrySeconds = 60;
}  // namespace

Clock& system_clock() {
  static SystemClock clock;
  return clock;
}

PolicyRunner::PolicyRunner(Engine& engine, Clock& clock, DeleteFn del)
    : engine_(engine), clock_(clock), delete_(std::move(del)) {}

PolicyRunner::~PolicyRunner() { stop(); }

Status PolicyRunner::start(bool threaded) {
  MS_ASSIGN_OR_RETURN(auto stored, engine_.property(policy::kPropertyId));
  if (stored) {
    auto p = policy::from_property(*stored);
    if (!p.is_ok()) {
      MS_LOG_ERROR("the store's snapshot policy is ignored ({}); `multisnap policy set` replaces it",
                   p.status().to_string());
    } else {
      auto autos = automatic(*p);
      std::lock_guard lock(mu_);
      policy_ = *p;
      due_ = policy::next_due(*p, autos.is_ok() ? *autos : std::vector<AutoSnapshot>{});
      can_free_ = p->on_full == OnFull::kDeleteOldest && autos.is_ok() && !autos->empty();
      MS_LOG_INFO("snapshot policy: {}", policy::to_property(*p));
    }
  }
  if (threaded) thread_ = std::thread([this] { thread_main(); });
  return Status::ok();
}

void PolicyRunner::stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    can_free_ = false;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PolicyRunner::thread_main() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    int64_t now = static_cast<int64_t>(clock_.now_ns() / 1000000000ull);
    if (need_space_ || (policy_ && now >= due_)) {
      lock.unlock();
      run_once();
      lock.lock();
      continue;
    }
    if (policy_) clock_.wait_until(lock, cv_, static_cast<uint64_t>(due_) * 1000000000ull);
    else cv_.wait(lock);
  }
}

void PolicyRunner::run_once() {
  std::lock_guard action(action_mu_);
  std::optional<Policy> p;
  bool space = false;
  {
    std::lock_guard lock(mu_);
    p = policy_;
    space = need_space_;
  }
  if (p && space) free_space(*p);
  {
    std::lock_guard lock(mu_);
    need_space_ = false;
    if (!p) can_free_ = false;
  }
  if (!p) return;
  take_if_due(*p, static_cast<int64_t>(clock_.now_ns() / 1000000000ull));
  prune(*p);
}

bool PolicyRunner::on_no_space() {
  if (!can_free_.load()) return false;
  {
    std::lock_guard lock(mu_);
    need_space_ = true;
  }
  cv_.notify_all();
  return true;
}

Result<std::vector<AutoSnapshot>> PolicyRunner::automatic(const Policy& p) {
  std::vector<policy::Snapshot> all;
  SnapshotId from = 0;
  for (;;) {
    MS_ASSIGN_OR_RETURN(auto page, engine_.list_snapshots(from, 1024));
    for (const SnapshotInfo& s : page) all.push_back({s.id, s.name});
    if (page.size() < 1024) break;
    from = page.back().id + 1;
  }
  return policy::automatic(p, all);
}

void PolicyRunner::take_if_due(const Policy& p, int64_t now) {
  auto autos = automatic(p);
  int64_t due = autos.is_ok() ? policy::next_due(p, *autos) : now;
  if (autos.is_ok() && now < due) {
    std::lock_guard lock(mu_);
    due_ = due;
    return;
  }
  // Due (or overdue after downtime): one snapshot now, the next `every` later.
  std::string name = policy::snapshot_name(p.prefix, now);
  auto s = autos.is_ok() ? engine_.create_snapshot(std::nullopt, name) : Result<SnapshotInfo>(autos.status());
  int64_t next = now + static_cast<int64_t>(p.every);
  if (s.is_ok()) {
    MS_LOG_INFO("policy: took snapshot {} ({})", s->id, name);
  } else {
    MS_LOG_ERROR("policy: could not take snapshot {}: {}", name, s.status().to_string());
    next = now + std::min<int64_t>(static_cast<int64_t>(p.every), kRetrySeconds);
  }
  std::lock_guard lock(mu_);
  due_ = next;
  if (s.is_ok() && p.on_full == OnFull::kDeleteOldest) can_free_ = true;
}

void PolicyRunner::prune(const Policy& p) {
  auto autos = automatic(p);
  if (!autos.is_ok()) {
    MS_LOG_ERROR("policy: cannot list snapshots to prune: {}", autos.status().to_string());
    return;
  }
  std::vector<uint64_t> doomed = policy::to_prune(p, *autos);
  size_t left = autos->size();
  for (uint64_t id : doomed) {
    auto it = std::find_if(autos->begin(), autos->end(), [&](const AutoSnapshot& a) { return a.id == id; });
    std::string name = policy::snapshot_name(p.prefix, it->time);
    Status s = delete_(static_cast<SnapshotId>(id));
    if (s.is_ok()) {
      MS_LOG_INFO("policy: pruned snapshot {} ({})", id, name);
      --left;
    } else {
      MS_LOG_WARN("policy: could not prune snapshot {} ({}): {}", id, name, s.to_string());
    }
  }
  can_free_ = p.on_full == OnFull::kDeleteOldest && left > 0;
}

void PolicyRunner::free_space(const Policy& p) {
  if (p.on_full != OnFull::kDeleteOldest) {
    can_free_ = false;
    return;
  }
  auto autos = automatic(p);
  if (!autos.is_ok()) {
    MS_LOG_ERROR("policy: cannot list snapshots to make room: {}", autos.status().to_string());
    return;
  }
  for (const AutoSnapshot& a : *autos) {  // lowest ID first: the oldest
    std::string name = policy::snapshot_name(p.prefix, a.time);
    Status s = delete_(static_cast<SnapshotId>(a.id));
    if (s.is_ok()) {
      MS_LOG_WARN("the store is full: deleted the oldest automatic snapshot {} ({}) to make room (--on-full delete-oldest)",
                  a.id, name);
      return;
    }
    MS_LOG_WARN("the store is full but automatic snapshot {} ({}) cannot be deleted: {}", a.id, name, s.to_string());
  }
  MS_LOG_ERROR("the store is full and no automatic snapshot is left to delete: writes that need a copy fail with ENOSPC");
  can_free_ = false;
}

Result<Policy> PolicyRunner::set(Policy p) {
  p.set_at = static_cast<int64_t>(clock_.now_ns() / 1000000000ull);
  std::lock_guard action(action_mu_);
  std::optional<Policy> old;
  {
    std::lock_guard lock(mu_);
    old = policy_;
  }
  if (old && old->prefix == p.prefix) {
    p.first_id = old->first_id;  // the snapshots it made stay the policy's
  } else {
    MS_ASSIGN_OR_RETURN(auto replica, engine_.replica_state());
    p.first_id = replica.newest ? uint64_t{replica.newest->id} + 1 : 1;
  }
  MS_TRY(policy::validate(p));
  MS_TRY(engine_.set_property(policy::kPropertyId, policy::to_property(p)));
  MS_LOG_INFO("snapshot policy set: {}", policy::to_property(p));
  auto autos = automatic(p);
  {
    std::lock_guard lock(mu_);
    policy_ = p;
    due_ = policy::next_due(p, autos.is_ok() ? *autos : std::vector<AutoSnapshot>{});
    need_space_ = false;
  }
  cv_.notify_all();
  prune(p);  // new rules apply at once
  return p;
}

Status PolicyRunner::clear() {
  std::lock_guard action(action_mu_);
  MS_TRY(engine_.set_property(policy::kPropertyId, std::nullopt));
  {
    std::lock_guard lock(mu_);
    policy_.reset();
    need_space_ = false;
    can_free_ = false;
  }
  cv_.notify_all();
  MS_LOG_INFO("snapshot policy cleared");
  return Status::ok();
}

Result<PolicyState> PolicyRunner::state() {
  PolicyState st;
  {
    std::lock_guard lock(mu_);
    st.policy = policy_;
    st.next_due = due_;
  }
  if (!st.policy) return st;
  MS_ASSIGN_OR_RETURN(auto autos, automatic(*st.policy));
  st.automatic = autos.size();
  return st;
}

}  // namespace multisnap
