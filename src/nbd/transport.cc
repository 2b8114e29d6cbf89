#include "nbd/transport.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace multisnap::nbd {
namespace {

void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0 && !(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

bool is_socket(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

bool same_file(int a, int b) {
  struct stat sa, sb;
  return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

}  // namespace

// ---- SocketTransport

ssize_t SocketTransport::receive(void* buf, size_t size) {
  ssize_t n = ::recv(socket_.get(), buf, size, 0);
  if (n < 0) error_ = errno;
  return n;
}

ssize_t SocketTransport::send(const iovec* iov, int count) {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(count);
  ssize_t n = ::sendmsg(socket_.get(), &msg, MSG_NOSIGNAL);
  if (n < 0) error_ = errno;
  return n;
}

void SocketTransport::shutdown() {
  ::shutdown(socket_.get(), SHUT_RDWR);
}

std::string SocketTransport::last_error() const {
  return std::strerror(error_);
}

// ---- PipeTransport

PipeTransport::PipeTransport(UniqueFd in, UniqueFd out) : in_(std::move(in)), out_(std::move(out)) {
  in_flags_ = fcntl(in_.get(), F_GETFL);
  out_flags_ = fcntl(out_.get(), F_GETFL);
  set_nonblocking(in_.get());
  set_nonblocking(out_.get());
}

PipeTransport::~PipeTransport() { restore_flags(); }

void PipeTransport::restore_flags() {
  if (in_.valid() && in_flags_ >= 0) fcntl(in_.get(), F_SETFL, in_flags_);
  if (out_.valid() && out_flags_ >= 0) fcntl(out_.get(), F_SETFL, out_flags_);
}

ssize_t PipeTransport::receive(void* buf, size_t size) {
  ssize_t n = ::read(in_.get(), buf, size);
  if (n < 0) error_ = errno;
  return n;
}

ssize_t PipeTransport::send(const iovec* iov, int count) {
  ssize_t n = ::writev(out_.get(), iov, count);  // SIGPIPE is ignored by serve
  if (n < 0) error_ = errno;
  return n;
}

void PipeTransport::shutdown() {
  // Pipes have no shutdown(): closing is what the other end sees. (Their
  // flags are not put back here: another thread may be in read() on them,
  // and a blocking read would not return. A closed end keeps O_NONBLOCK.)
  in_.reset();
  out_.reset();
}

std::string PipeTransport::last_error() const {
  return in_.valid() ? std::strerror(error_) : "closed";
}

std::unique_ptr<Transport> make_stream_transport(UniqueFd in, UniqueFd out) {
  if (is_socket(in.get()) && same_file(in.get(), out.get())) {
    set_nonblocking(in.get());
    return std::make_unique<SocketTransport>(std::move(in));  // `out` is closed
  }
  return std::make_unique<PipeTransport>(std::move(in), std::move(out));
}

}  // namespace multisnap::nbd
