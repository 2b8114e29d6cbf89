// A libnbd handle for the tests that drive the server with the real client
// library (libnbd_test.cc, transport_test.cc).
#pragma once

#include <libnbd.h>

#include <string>

namespace multisnap::nbd::testing {

struct NbdHandle {
  nbd_handle* h = nbd_create();
  ~NbdHandle() { nbd_close(h); }
  NbdHandle() = default;
  NbdHandle(const NbdHandle&) = delete;
  NbdHandle& operator=(const NbdHandle&) = delete;
  operator nbd_handle*() const { return h; }
};

// libnbd's last error, for failure messages.
inline std::string err() { return nbd_get_error() ? nbd_get_error() : "?"; }

}  // namespace multisnap::nbd::testing
