#include "nbd/request.h"

#include "nbd/protocol.h"

namespace multisnap::nbd {
namespace {

using namespace proto;

bool known_command(uint16_t type) {
  return type <= kCmdBlockStatus && type != kCmdDisc;
}

uint16_t allowed_flags(uint16_t type, const ExportParams& p) {
  uint16_t flags = p.has(kFlagSendFua) ? kCmdFlagFua : 0;
  switch (type) {
    case kCmdRead:
      if (p.has(kFlagSendDf)) flags |= kCmdFlagDf;
      break;
    case kCmdWriteZeroes:
      flags |= kCmdFlagNoHole;
      if (p.has(kFlagSendFastZero)) flags |= kCmdFlagFastZero;
      break;
    case kCmdBlockStatus: flags |= kCmdFlagReqOne; break;
    default: break;
  }
  return flags;
}

bool writes_data(uint16_t type) {
  return type == kCmdWrite || type == kCmdTrim || type == kCmdWriteZeroes;
}

// The transmission flag that advertises `type`, or 0 when always available.
uint16_t advertising_flag(uint16_t type) {
  switch (type) {
    case kCmdFlush: return kFlagSendFlush;
    case kCmdTrim: return kFlagSendTrim;
    case kCmdWriteZeroes: return kFlagSendWriteZeroes;
    case kCmdCache: return kFlagSendCache;
    default: return 0;
  }
}

RequestCheck check_range(const Request& r, const ExportParams& p) {
  bool past_end = r.offset > p.size || r.length > p.size - r.offset;
  if (past_end) {
    bool grows = r.type == kCmdWrite || r.type == kCmdWriteZeroes;
    return {grows ? kEnospc : kEinval, "request past the end of the export"};
  }
  if (p.min_block > 1 && (r.offset % p.min_block != 0 || r.length % p.min_block != 0)) {
    return {kEinval, "request not aligned to the minimum block size"};
  }
  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length > p.max_block) {
    return {kEinval, "request longer than the maximum block size"};
  }
  return {};
}

}  // namespace

bool decode_request(const uint8_t* p, Request* out) {
  if (get32(p) != kRequestMagic) return false;
  out->flags = get16(p + 4);
  out->type = get16(p + 6);
  out->handle = get64(p + 8);
  out->offset = get64(p + 16);
  out->length = get32(p + 24);
  return true;
}

RequestCheck check_request(const Request& r, const RequestContext& context) {
  const ExportParams& p = *context.params;
  if (!known_command(r.type)) return {kEinval, "unknown command"};
  if (r.flags & ~allowed_flags(r.type, p)) return {kEinval, "invalid flags for this command"};
  if (writes_data(r.type) && p.has(kFlagReadOnly)) return {kEperm, "the export is read-only"};
  uint16_t needed = advertising_flag(r.type);
  if (needed != 0 && !p.has(needed)) return {kEinval, "command not supported by this export"};
  if (r.type == kCmdFlush) {
    if (r.offset != 0 || r.length != 0) return {kEinval, "FLUSH with an offset or length"};
    return {};
  }
  if (r.type == kCmdBlockStatus) {
    if (!context.structured_replies || !context.block_status) {
      return {kEinval, "BLOCK_STATUS without a negotiated meta context"};
    }
    if (r.length == 0) return {kEinval, "BLOCK_STATUS of length 0"};
  }
  return check_range(r, p);
}

}  // namespace multisnap::nbd
