// Transport: how a Connection moves its bytes. The plain socket (the normal
// case: recv() and sendmsg() straight on the socket, nothing copied), a pair
// of pipes or other stream descriptors (`serve --nbd stdio`), or a TLS
// session layered over either (tls.h).
//
// Every transport is non-blocking. The Connection polls in_fd() for POLLIN
// and out_fd() for POLLOUT (the same descriptor for a socket) when a call
// reports EAGAIN, and otherwise never looks at the descriptors.
//
// Not thread-safe: the connection thread owns it.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <memory>
#include <string>

#include "nbd/socket_util.h"

namespace multisnap::nbd {

class Transport {
 public:
  virtual ~Transport() = default;

  // Like recv(2): bytes received (> 0), 0 at the end of the stream, or -1
  // with errno set (EAGAIN/EWOULDBLOCK: nothing now, poll in_fd()).
  virtual ssize_t receive(void* buf, size_t size) = 0;
  // Like sendmsg(2) over iov[0, count): bytes taken (> 0), or -1 with errno
  // set (EAGAIN: poll out_fd()). After EAGAIN, the next call must offer the
  // same bytes first (a TLS session may have taken them in already); the
  // Connection's output queues do that by construction.
  virtual ssize_t send(const iovec* iov, int count) = 0;
  virtual int in_fd() const = 0;
  virtual int out_fd() const = 0;
  // Ends both directions at once, without a goodbye (the client sees the
  // end of the stream). Idempotent.
  virtual void shutdown() = 0;
  // Says goodbye if the protocol has one (TLS close_notify), without
  // blocking. Before a normal close.
  virtual void close_gracefully() {}
  // Why the last call that returned -1 failed, for the log.
  virtual std::string last_error() const = 0;
  // "TLS 1.3, PSK user 'alice'" or "" for plain transports.
  virtual std::string describe_security() const { return {}; }
};

// A connected stream socket: recv() and sendmsg(MSG_NOSIGNAL).
class SocketTransport final : public Transport {
 public:
  explicit SocketTransport(UniqueFd socket) : socket_(std::move(socket)) {}
  ssize_t receive(void* buf, size_t size) override;
  ssize_t send(const iovec* iov, int count) override;
  int in_fd() const override { return socket_.get(); }
  int out_fd() const override { return socket_.get(); }
  void shutdown() override;
  std::string last_error() const override;

 private:
  UniqueFd socket_;
  int error_ = 0;
};

// Two one-way stream descriptors (pipes, or anything read() and writev()
// work on): standard input and output for `--nbd stdio`. Both are made
// non-blocking.
class PipeTransport final : public Transport {
 public:
  // Makes both ends non-blocking; the destructor puts back their flags
  // (the open file descriptions are shared with whoever started us).
  PipeTransport(UniqueFd in, UniqueFd out);
  ~PipeTransport() override;
  ssize_t receive(void* buf, size_t size) override;
  ssize_t send(const iovec* iov, int count) override;
  int in_fd() const override { return in_.get(); }
  int out_fd() const override { return out_.get(); }
  void shutdown() override;
  std::string last_error() const override;

 private:
  void restore_flags();
  UniqueFd in_, out_;
  int in_flags_ = -1, out_flags_ = -1;  // as they were before
  int error_ = 0;
};

// The transport for descriptors a client is already connected to (stdio):
// a SocketTransport when `in` and `out` are the same socket (what libnbd's
// connect_command and systemd's Accept=yes give), else a PipeTransport.
// Takes both descriptors (they may be duplicates of each other).
std::unique_ptr<Transport> make_stream_transport(UniqueFd in, UniqueFd out);

}  // namespace multisnap::nbd
