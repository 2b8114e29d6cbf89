#include "nbd/error_map.h"

#include <cerrno>

#include "nbd/protocol.h"

namespace multisnap::nbd {

uint32_t transmission_error(const Status& status) {
  if (status.is_ok()) return 0;
  switch (status.to_errno()) {
    case EPERM:
    case EROFS: return proto::kEperm;
    case ENOMEM: return proto::kEnomem;
    case EINVAL: return proto::kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return proto::kEnospc;
    case EOVERFLOW: return proto::kEoverflow;
    case ENOTSUP: return proto::kEnotsup;
    case ESHUTDOWN: return proto::kEshutdown;
    default: return proto::kEio;
  }
}

uint32_t option_error(const Status& status) {
  switch (status.code()) {
    case Code::kNotFound: return proto::kRepErrUnknown;
    case Code::kShutdown: return proto::kRepErrShutdown;
    case Code::kNotSupported: return proto::kRepErrUnsup;
    case Code::kInvalidArgument:
    case Code::kOutOfRange: return proto::kRepErrInvalid;
    case Code::kReadOnly:
    case Code::kBusy: return proto::kRepErrPolicy;
    default: return proto::kRepErrPlatform;
  }
}

}  // namespace multisnap::nbd
