// PolicyRunner: applies the store's rolling-snapshot policy
// (docs/lifecycle.md) while `serve` runs. A thread wakes when the next
// automatic snapshot is due, takes it, prunes by the policy's
// grandfather-father-son rules (src/policy/policy.h), and, for
// `--on-full delete-oldest`, deletes the oldest automatic snapshot when the
// engine reports a full store (EngineOptions::on_no_space).
//
// Time comes from a Clock, so tests drive it: with start(false) there is no
// thread and run_once() does one pass on the caller's thread.
//
// Thread-safe. set() and clear() are serialised with the thread's passes:
// once clear() returns no automatic snapshot is created or pruned.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "engine/engine.h"
#include "policy/policy.h"

namespace multisnap {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time, ns since the Unix epoch.
  virtual uint64_t now_ns() = 0;
  // Waits on cv (lock held, as condition_variable::wait) until notified or
  // until now_ns() reaches deadline_ns; may return early.
  virtual void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, uint64_t deadline_ns) = 0;
};
Clock& system_clock();

struct PolicyState {
  std::optional<policy::Policy> policy;  // none set
  int64_t next_due = 0;                  // seconds; only with a policy
  uint64_t automatic = 0;                // automatic snapshots alive
};

class PolicyRunner {
 public:
  // Deletes a snapshot as `snapshot delete` without --force would (refused
  // while clients use it). Called from the runner's thread or set()'s caller.
  using DeleteFn = std::function<Status(SnapshotId)>;
  PolicyRunner(Engine& engine, Clock& clock, DeleteFn del);
  ~PolicyRunner();

  // Loads the stored policy (an unreadable one is logged and ignored: serve
  // goes on without it) and, if `threaded`, starts the thread.
  Status start(bool threaded = true);
  void stop();

  // Stores `p` (durably) with set_at = now and first_id = the next snapshot
  // ID (kept from the current policy when its prefix is the same, so the
  // snapshots it made stay managed). Returns what was stored.
  Result<policy::Policy> set(policy::Policy p);
  Status clear();
  Result<PolicyState> state();

  // One pass: frees space if the engine asked, takes a snapshot if one is
  // due, prunes. The thread calls it; tests without a thread do.
  void run_once();
  // EngineOptions::on_no_space (engine thread; does not block).
  bool on_no_space();

 private:
  void thread_main();
  Result<std::vector<policy::AutoSnapshot>> automatic(const policy::Policy& p);
  void take_if_due(const policy::Policy& p, int64_t now);
  void prune(const policy::Policy& p);
  void free_space(const policy::Policy& p);

  Engine& engine_;
  Clock& clock_;
  DeleteFn delete_;
  std::mutex action_mu_;  // one pass, set or clear at a time; taken before mu_
  std::mutex mu_;         // guards what follows
  std::condition_variable cv_;
  std::optional<policy::Policy> policy_;
  int64_t due_ = 0;  // seconds, valid with policy_
  bool need_space_ = false;
  bool stop_ = false;
  std::atomic<bool> can_free_{false};  // delete-oldest and an automatic snapshot to delete
  std::thread thread_;
};

}  // namespace multisnap
