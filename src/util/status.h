// Status and Result<T>: how every layer below the CLI reports errors.
//
// No exceptions cross a layer boundary: a function that can fail returns a
// [[nodiscard]] Status (or Result<T>). A Status carries a code that maps to an
// errno (so the NBD layer can answer with the right error) and one sentence
// for a human. The CLI turns a failed Status into "multisnap: <message>".
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace multisnap {

enum class Code : int {
  kOk = 0,
  kIoError,          // EIO: the device failed a read, write or flush.
  kNoSpace,          // ENOSPC: the store (data or metadata) is full.
  kInvalidArgument,  // EINVAL: the caller asked for something malformed.
  kOutOfRange,       // EINVAL for NBD; an offset or length past the end.
  kNotFound,         // ENOENT: no such snapshot, file or key.
  kExists,           // EEXIST: the name or file is already taken.
  kCorruption,       // EIO: on-disk data failed validation.
  kReadOnly,         // EPERM: write to a read-only volume or store.
  kBusy,             // EBUSY: in use (e.g. a snapshot with clients).
  kNotSupported,     // ENOTSUP
  kFailed,           // EIO: the store is in the failed state until reopened.
  kShutdown,         // ESHUTDOWN: the engine is stopping.
};

const char* code_name(Code c);
int code_errno(Code c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }
  bool is_ok() const { return code_ == Code::kOk; }
  explicit operator bool() const { return is_ok(); }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  int to_errno() const { return code_errno(code_); }
  std::string to_string() const;

  // Adds context in front of the message: "reading block 12: checksum mismatch".
  Status annotate(std::string_view context) const;

  void ignore() const {}

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

template <typename... Args>
Status make_error(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}
Status errno_status(int err, std::string_view what);

// Result<T>: a T or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace multisnap

#define MS_CONCAT_INNER(a, b) a##b
#define MS_CONCAT(a, b) MS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function when `expr` fails.
#define MS_TRY(expr)                                     \
  do {                                                   \
    ::multisnap::Status ms_try_status_ = (expr);         \
    if (!ms_try_status_.is_ok()) return ms_try_status_;  \
  } while (0)

// `lhs = value of expr` or return its Status.
#define MS_ASSIGN_OR_RETURN(lhs, expr) \
  MS_ASSIGN_OR_RETURN_IMPL(MS_CONCAT(ms_result_, __LINE__), lhs, expr)
#define MS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.is_ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
