#include "nbd/export_params.h"

#include <algorithm>
#include <bit>

#include "nbd/protocol.h"
#include "util/units.h"

namespace multisnap::nbd {
namespace {

uint16_t transmission_flags(const ExportInfo& info, bool structured_replies) {
  uint16_t flags = proto::kFlagHasFlags;
  if (info.read_only) {
    flags |= proto::kFlagReadOnly;
  } else {
    flags |= proto::kFlagSendFlush | proto::kFlagSendFua;
    if (info.can_trim) flags |= proto::kFlagSendTrim;
    if (info.can_write_zeroes) {
      flags |= proto::kFlagSendWriteZeroes;
      if (info.can_fast_zero) flags |= proto::kFlagSendFastZero;
    }
  }
  if (info.can_cache) flags |= proto::kFlagSendCache;
  if (info.can_multi_conn) flags |= proto::kFlagCanMultiConn;
  if (structured_replies) flags |= proto::kFlagSendDf;
  return flags;
}

}  // namespace

Result<ExportParams> make_export_params(const ExportInfo& info, bool structured_replies) {
  if (!is_power_of_two(info.min_block) || info.min_block > 65536) {
    return make_error(Code::kInvalidArgument, "export '{}' has an invalid minimum block size {}",
                      info.name, info.min_block);
  }
  ExportParams p;
  p.size = info.size;
  p.flags = transmission_flags(info, structured_replies);
  p.min_block = info.min_block;
  uint32_t preferred = std::max({info.preferred_block, info.min_block, 512u});
  p.preferred_block = std::min(std::bit_ceil(preferred), 1u << 30);
  uint32_t max_block = info.max_block == 0 ? kMaxPayload : std::min(info.max_block, kMaxPayload);
  max_block -= max_block % p.min_block;
  p.max_block = std::max(max_block, p.min_block);
  return p;
}

}  // namespace multisnap::nbd
