#include "util/status.h"

#include <cstring>

namespace multisnap {

const char* code_name(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kIoError: return "I/O error";
    case Code::kNoSpace: return "no space";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kOutOfRange: return "out of range";
    case Code::kNotFound: return "not found";
    case Code::kExists: return "exists";
    case Code::kCorruption: return "corruption";
    case Code::kReadOnly: return "read-only";
    case Code::kBusy: return "busy";
    case Code::kNotSupported: return "not supported";
    case Code::kFailed: return "store failed";
    case Code::kShutdown: return "shutting down";
  }
  return "unknown";
}

int code_errno(Code c) {
  switch (c) {
    case Code::kOk: return 0;
    case Code::kIoError: return EIO;
    case Code::kNoSpace: return ENOSPC;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kOutOfRange: return EINVAL;
    case Code::kNotFound: return ENOENT;
    case Code::kExists: return EEXIST;
    case Code::kCorruption: return EIO;
    case Code::kReadOnly: return EPERM;
    case Code::kBusy: return EBUSY;
    case Code::kNotSupported: return ENOTSUP;
    case Code::kFailed: return EIO;
    case Code::kShutdown: return ESHUTDOWN;
  }
  return EIO;
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  return message_.empty() ? std::string(code_name(code_)) : message_;
}

Status Status::annotate(std::string_view context) const {
  if (is_ok()) return *this;
  return Status(code_, fmt::format("{}: {}", context, message_));
}

Status errno_status(int err, std::string_view what) {
  Code code = Code::kIoError;
  switch (err) {
    case ENOSPC: code = Code::kNoSpace; break;
    case ENOENT: code = Code::kNotFound; break;
    case EEXIST: code = Code::kExists; break;
    case EINVAL: code = Code::kInvalidArgument; break;
    case EROFS:
    case EPERM:
    case EACCES: code = Code::kReadOnly; break;
    case EBUSY: code = Code::kBusy; break;
    case EOPNOTSUPP: code = Code::kNotSupported; break;
    default: break;
  }
  return Status(code, fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace multisnap
