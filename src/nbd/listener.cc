#include "nbd/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace multisnap::nbd {
namespace {

// Clients the kernel holds for accept(). A burst of connections beyond it
// makes the kernel drop TCP SYNs (the client retries after a second or more)
// and block unix connects; the kernel caps it at net.core.somaxconn (4096 on
// current kernels), and the accept thread drains several thousand a second.
constexpr int kBacklog = SOMAXCONN;

Status fill_unix_address(const std::string& path, sockaddr_un* addr) {
  if (path.empty() || path.size() >= sizeof addr->sun_path) {
    return make_error(Code::kInvalidArgument, "unix socket path '{}' is empty or too long", path);
  }
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return Status::ok();
}

// Removes a socket file left behind by a server that is gone.
Status remove_stale_socket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::ok();
    return errno_status(errno, fmt::format("cannot stat {}", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return make_error(Code::kExists, "{} exists and is not a socket", path);
  }
  UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return errno_status(errno, "socket");
  if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
    return make_error(Code::kBusy, "another server is listening on {}", path);
  }
  if (errno != ECONNREFUSED) return errno_status(errno, fmt::format("cannot probe {}", path));
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return errno_status(errno, fmt::format("cannot remove stale socket {}", path));
  }
  return Status::ok();
}

std::string numeric_host(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, host, sizeof host);
  } else {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, host, sizeof host);
  }
  return host;
}

}  // namespace

Result<Listener> Listener::open(const ListenAddress& address, uint32_t unix_mode) {
  if (address.kind == ListenAddress::Kind::kUnix) return open_unix(address, unix_mode);
  return open_tcp(address);
}

Result<Listener> Listener::open_unix(const ListenAddress& address, uint32_t mode) {
  sockaddr_un addr;
  MS_TRY(fill_unix_address(address.path, &addr));
  MS_TRY(remove_stale_socket(address.path, addr));
  Listener l;
  l.fd_ = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!l.fd_.valid()) return errno_status(errno, "socket");
  // On Linux the socket file takes its mode from the socket inode (minus the
  // umask), so set it before bind() and fix it up exactly afterwards.
  (void)fchmod(l.fd_.get(), mode);
  if (bind(l.fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return errno_status(errno, fmt::format("cannot bind {}", address.path));
  }
  struct stat st;
  if (chmod(address.path.c_str(), mode) != 0 || lstat(address.path.c_str(), &st) != 0) {
    Status s = errno_status(errno, fmt::format("cannot set the mode of {}", address.path));
    unlink(address.path.c_str());
    return s;
  }
  l.unix_dev_ = st.st_dev;
  l.unix_ino_ = st.st_ino;
  l.bound_ = address;
  if (listen(l.fd_.get(), kBacklog) != 0) {
    return errno_status(errno, fmt::format("cannot listen on {}", address.path));
  }
  return l;
}

Result<Listener> Listener::open_tcp(const ListenAddress& address) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* found = nullptr;
  std::string port = std::to_string(address.port);
  int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return make_error(Code::kInvalidArgument, "cannot resolve '{}': {}", address.host,
                      gai_strerror(rc));
  }
  Status last = make_error(Code::kInvalidArgument, "no address for '{}'", address.host);
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) {
      last = errno_status(errno, "socket");
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd.get(), kBacklog) != 0) {
      last = errno_status(errno, fmt::format("cannot listen on {}:{}", address.host, port));
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    Listener l;
    l.fd_ = std::move(fd);
    l.bound_ = address;
    l.bound_.host = numeric_host(reinterpret_cast<sockaddr*>(&ss));
    l.bound_.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                   : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    freeaddrinfo(found);
    return l;
  }
  freeaddrinfo(found);
  return last;
}

Result<Listener> Listener::adopt(int fd) {
  Listener l;
  l.fd_ = UniqueFd(fd);
  int type = 0, accepting = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return errno_status(errno, fmt::format("inherited descriptor {} is not a socket", fd));
  }
  len = sizeof accepting;
  if (type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 ||
      !accepting) {
    return make_error(Code::kInvalidArgument,
                      "inherited descriptor {} is not a listening stream socket", fd);
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 ||
      fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    return errno_status(errno, fmt::format("inherited descriptor {}", fd));
  }
  sockaddr_storage ss{};
  len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return errno_status(errno, fmt::format("inherited descriptor {}", fd));
  }
  if (ss.ss_family == AF_UNIX) {
    l.bound_.kind = ListenAddress::Kind::kUnix;
    const auto* un = reinterpret_cast<const sockaddr_un*>(&ss);
    size_t max = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    l.bound_.path = un->sun_path[0] == '\0' ? "(abstract)" : std::string(un->sun_path, strnlen(un->sun_path, max));
  } else if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    l.bound_.kind = ListenAddress::Kind::kTcp;
    l.bound_.host = numeric_host(reinterpret_cast<sockaddr*>(&ss));
    l.bound_.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                   : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  } else {
    return make_error(Code::kInvalidArgument, "inherited socket {} is neither unix nor TCP", fd);
  }
  l.adopted_ = true;
  return l;
}

Listener::~Listener() {
  if (adopted_) return;
  if (!fd_.valid() || bound_.kind != ListenAddress::Kind::kUnix) return;
  struct stat st;
  if (lstat(bound_.path.c_str(), &st) == 0 && st.st_dev == unix_dev_ && st.st_ino == unix_ino_) {
    unlink(bound_.path.c_str());
  }
}

}  // namespace multisnap::nbd
