// ExportParams: what one connection advertises for its export (size,
// transmission flags, block sizes), derived from the backend's ExportInfo.
// Both NBD_OPT_INFO and NBD_OPT_GO use this, so they always agree.
// Pure functions.
#pragma once

#include <cstdint>

#include "nbd/backend.h"
#include "util/status.h"

namespace multisnap::nbd {

// Largest READ/WRITE payload the server ever accepts, whatever the backend
// says; the per-connection in-flight byte bound must be at least this.
inline constexpr uint32_t kMaxPayload = 32u << 20;

struct ExportParams {
  uint64_t size = 0;
  uint16_t flags = 0;  // NBD transmission flags
  uint32_t min_block = 1;
  uint32_t preferred_block = 4096;
  uint32_t max_block = kMaxPayload;  // largest READ/WRITE length accepted
  bool has(uint16_t flag) const { return (flags & flag) != 0; }
};

// kInvalidArgument when the export's min_block is not a power of two in
// [1, 64 KiB]. A preferred block below max(min_block, 512) or not a power of
// two is rounded up; max_block is clamped to kMaxPayload and rounded down to
// a multiple of min_block. NBD_FLAG_SEND_DF is set only with structured
// replies (every read is answered with one data chunk).
Result<ExportParams> make_export_params(const ExportInfo& info, bool structured_replies);

}  // namespace multisnap::nbd
