// Engine::space_use: the store's space pass (ExceptionStore::start_space_scan)
// run on the engine thread a page at a time.
#include <chrono>

#include "engine/core.h"
#include "engine/engine.h"
#include "util/log.h"

namespace multisnap {

namespace {
constexpr uint32_t kRestartsBeforeWhole = 3;
}  // namespace

Result<SpaceUse> Engine::space_use(const std::function<void(uint64_t done, uint64_t total)>& progress) {
  SpaceScanTracker& tracker = core_->space_scans();
  tracker.begin();
  struct End {
    SpaceScanTracker& t;
    ~End() { t.end(); }
  } end{tracker};
  const uint32_t page = std::max<uint32_t>(1, core_->options().space_page);
  const auto start = std::chrono::steady_clock::now();
  SpaceUse use;
  for (;; ++use.restarts) {
    // After a few restarts the set of snapshots keeps moving: hold the
    // engine thread for one whole pass instead.
    const bool whole = use.restarts >= kRestartsBeforeWhole;
    std::unique_ptr<SpaceScan> scan;
    bool ran = false, done = false, changed = false;
    Status status;
    auto run_step = [&](uint32_t budget) {
      auto r = scan->step(budget);
      if (!r.is_ok()) status = r.status();
      else done = *r;
    };
    core_->run_control(false, [&] {
      ran = true;
      auto r = core_->store().start_space_scan();
      if (!r.is_ok()) {
        status = r.status();
        return;
      }
      scan = std::move(r).value();
      run_step(whole ? UINT32_MAX : page);
    });
    if (!ran) return Status(Code::kShutdown, "the engine is shutting down");
    while (status.is_ok() && !done && !changed) {
      tracker.update(scan->visited(), scan->total());
      if (progress) progress(scan->visited(), scan->total());
      ran = false;
      core_->run_control(false, [&] {
        ran = true;
        if (scan->snapshots_changed()) changed = true;
        else run_step(page);
      });
      if (!ran) return Status(Code::kShutdown, "the engine is shutting down");
    }
    MS_TRY(status);
    if (changed) {
      MS_LOG_DEBUG("space pass: snapshots changed after {} exceptions; starting again", scan->visited());
      continue;
    }
    tracker.update(scan->visited(), scan->total());
    if (progress) progress(scan->visited(), scan->visited());
    use.snapshots = scan->result();
    use.unreferenced_chunks = scan->unreferenced_chunks();
    use.exceptions = scan->visited();
    break;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MS_LOG_INFO("space pass: {} exceptions, {} snapshots in {:.3f} s{}", use.exceptions, use.snapshots.size(), secs,
              use.restarts ? fmt::format(" ({} restarts)", use.restarts) : std::string());
  return use;
}

}  // namespace multisnap
