// Small POSIX helpers for the NBD server: an owning file descriptor, an
// eventfd used to wake a thread out of poll(), and non-blocking setup.
// UniqueFd is not thread-safe; WakeFd::wake() may be called from any thread.
#pragma once

#include <string>
#include <utility>

#include "util/status.h"

namespace multisnap::nbd {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

// An eventfd: wake() makes it readable until clear() is called.
class WakeFd {
 public:
  static Result<WakeFd> create();
  int fd() const { return fd_.get(); }
  void wake() const;
  void clear() const;

 private:
  UniqueFd fd_;
};

// "unix" or "1.2.3.4:5678" / "[::1]:5678" for a connected socket.
std::string describe_peer(int fd);

}  // namespace multisnap::nbd
