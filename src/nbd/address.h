// Where the NBD server listens, as written on the command line:
//   unix:PATH         a unix socket file
//   tcp:HOST:PORT     HOST may be empty (127.0.0.1), a name, an IPv4 address
//                     or a bracketed IPv6 address ("tcp:[::1]:10809");
//                     PORT 0 asks for any free port.
// Plain values; parse_listen_address is a pure function.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "util/status.h"

namespace multisnap::nbd {

struct ListenAddress {
  enum class Kind { kUnix, kTcp };
  Kind kind = Kind::kUnix;
  std::string path;   // kUnix
  std::string host;   // kTcp, without brackets; never empty after parsing
  uint16_t port = 0;  // kTcp

  // Back to the written form: "unix:/run/x.sock", "tcp:127.0.0.1:10809".
  std::string to_string() const;
};

// kInvalidArgument for anything but "unix:PATH" or "tcp:[HOST]:PORT".
Result<ListenAddress> parse_listen_address(std::string_view spec);

}  // namespace multisnap::nbd
