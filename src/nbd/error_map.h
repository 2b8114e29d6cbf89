// How a backend Status becomes an NBD error: an errno in a transmission
// reply, or an NBD_REP_ERR_* type in an option reply. Pure functions.
#pragma once

#include <cstdint>

#include "util/status.h"

namespace multisnap::nbd {

// One of the error values the protocol allows (EPERM, EIO, ENOMEM, EINVAL,
// ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN), from Status::to_errno(). Errnos the
// protocol does not know become EIO (ENOENT, EBUSY, ...), EROFS becomes EPERM
// and EDQUOT/EFBIG become ENOSPC. Never 0 for a failed status.
uint32_t transmission_error(const Status& status);

// The NBD_REP_ERR_* reply for an option that failed with `status`.
uint32_t option_error(const Status& status);

}  // namespace multisnap::nbd
