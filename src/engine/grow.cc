// Engine::grow: the store's data area takes in space added to its device.
#include "engine/core.h"
#include "engine/engine.h"
#include "util/log.h"
#include "util/units.h"

namespace multisnap {

Result<GrowResult> Engine::grow(uint64_t store_bytes) {
  Result<GrowResult> result = GrowResult{};
  // Quiesced: the commit below must not take remaps whose copies are still
  // in flight (E3); writes wait for that one commit.
  core_->run_control(true, [&] {
    result = grow_store(core_->store(), core_->store_device(), store_bytes);
    core_->store_failure();  // mirror a failed sync at once
    if (!result.is_ok()) return;
    if (Status s = core_->commit_now(); !s.is_ok()) result = s;
  });
  if (result.is_ok())
    MS_LOG_INFO("the store grew from {} to {} ({} more data chunks; room up to {})", format_size(result->old_bytes),
                format_size(result->new_bytes), result->new_chunks - result->old_chunks,
                format_size(result->max_bytes));
  return result;
}

}  // namespace multisnap
