// Listening sockets for the NBD server (address.h says what addresses look
// like).
//
// unix: the socket file is created with `unix_mode` (0600 by default). An
// existing socket file nobody listens on (connect() refused) is removed
// first; a live one, or a file that is not a socket, is an error. The file is
// removed again when the Listener is destroyed, if it is still the one it
// created.
// tcp: an empty HOST means 127.0.0.1; "[::1]" style IPv6 literals work; port
// 0 picks a free port, and bound() reports the real one.
//
// Not thread-safe; the server's accept thread owns its listeners.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "nbd/address.h"
#include "nbd/socket_util.h"
#include "util/status.h"

namespace multisnap::nbd {

class Listener {
 public:
  static Result<Listener> open(const ListenAddress& address, uint32_t unix_mode);
  // Takes over a socket that is already listening (systemd socket
  // activation). kInvalidArgument if it is not a listening stream socket.
  // Its socket file, if any, is left in place on destruction: whoever made
  // it removes it.
  static Result<Listener> adopt(int fd);
  Listener(Listener&&) = default;
  Listener& operator=(Listener&&) = default;
  ~Listener();

  int fd() const { return fd_.get(); }
  const ListenAddress& bound() const { return bound_; }  // with the real TCP port

 private:
  Listener() = default;
  static Result<Listener> open_unix(const ListenAddress& address, uint32_t mode);
  static Result<Listener> open_tcp(const ListenAddress& address);

  UniqueFd fd_;
  ListenAddress bound_;
  bool adopted_ = false;  // from adopt(): the socket file is not ours
  dev_t unix_dev_ = 0;  // identity of the socket file we created
  ino_t unix_ino_ = 0;
};

}  // namespace multisnap::nbd
