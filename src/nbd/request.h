// Transmission requests: decoding the 28-byte header and deciding whether a
// request may go to the Export or must be refused, and with which error.
// Pure functions, no state.
#pragma once

#include <cstdint>

#include "nbd/export_params.h"
#include "nbd/protocol.h"

namespace multisnap::nbd {

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Decodes proto::kRequestSize bytes at p. False when the magic is wrong (the
// stream cannot be resynchronised; the connection must be dropped).
bool decode_request(const uint8_t* p, Request* out);

// Only NBD_CMD_WRITE carries a payload.
inline bool has_payload(const Request& r) {
  return r.type == proto::kCmdWrite;
}

struct RequestCheck {
  uint32_t error = 0;       // NBD errno; 0: pass the request to the export
  const char* reason = "";  // for the log and the structured error message
};

struct RequestContext {
  const ExportParams* params = nullptr;
  bool structured_replies = false;
  bool block_status = false;  // base:allocation was selected for this export
};

// The protocol's answers to bad requests:
//  * unknown command, or a flag not valid for the command or not advertised: EINVAL
//  * write, trim or write-zeroes on a read-only export: EPERM
//  * a command the export did not advertise (flush, trim, ...): EINVAL
//  * FLUSH with a non-zero offset or length: EINVAL
//  * past the end: ENOSPC for WRITE and WRITE_ZEROES, EINVAL otherwise
//  * offset or length not a multiple of min_block: EINVAL
//  * READ or WRITE longer than max_block: EINVAL
//  * BLOCK_STATUS without structured replies and base:allocation, or with
//    length 0: EINVAL
// Other zero-length requests are valid (and the server completes them
// without calling the export). NBD_CMD_DISC is never checked.
RequestCheck check_request(const Request& r, const RequestContext& context);

}  // namespace multisnap::nbd
