#include "daemon/metrics_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

#include "util/log.h"

namespace multisnap {

namespace {

std::string response(std::string_view status, std::string_view content_type, std::string_view body,
                     std::string_view extra_headers = {}) {
  return fmt::format("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{}",
                     status, content_type, body.size(), extra_headers, body);
}

std::string plain(std::string_view status, std::string_view text) {
  return response(status, "text/plain; charset=utf-8", text);
}

// Milliseconds left until `deadline` (0 when past).
int ms_left(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const Options& options,
                                                             std::function<std::string()> render) {
  MS_ASSIGN_OR_RETURN(nbd::ListenAddress address, nbd::parse_listen_address(options.listen));
  if (address.kind != nbd::ListenAddress::Kind::kTcp)
    return make_error(Code::kInvalidArgument, "--metrics must be tcp:HOST:PORT, not '{}'", options.listen);
  MS_ASSIGN_OR_RETURN(nbd::Listener listener, nbd::Listener::open(address, 0600));
  MS_ASSIGN_OR_RETURN(nbd::WakeFd wake, nbd::WakeFd::create());
  std::unique_ptr<MetricsServer> s(new MetricsServer(std::move(listener), std::move(wake), options, std::move(render)));
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

MetricsServer::~MetricsServer() {
  stopping_ = true;
  wake_.wake();
  if (thread_.joinable()) thread_.join();
}

std::string MetricsServer::address() const { return listener_.bound().to_string(); }

void MetricsServer::loop() {
  while (!stopping_) {
    pollfd fds[2] = {{listener_.fd(), POLLIN, 0}, {wake_.fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      MS_LOG_ERROR("metrics: poll failed: {}", std::strerror(errno));
      return;
    }
    if (stopping_) return;
    if (!(fds[0].revents & POLLIN)) continue;
    nbd::UniqueFd client(::accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!client.valid()) {
      if (errno == EMFILE || errno == ENFILE) ::usleep(100 * 1000);  // do not spin while out of descriptors
      continue;
    }
    serve_one(client.get());
  }
}

void MetricsServer::serve_one(int fd) {
  const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
  std::string request;
  char buf[2048];
  // Read the request head (a GET has no body); stop at its blank line, at
  // the size limit, or at the deadline.
  while (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
    if (request.size() > options_.max_request) break;
    // The wake descriptor too: stopping the daemon does not wait for a
    // slow client's timeout.
    pollfd p[2] = {{fd, POLLIN, 0}, {wake_.fd(), POLLIN, 0}};
    int left = ms_left(deadline);
    if (left == 0 || ::poll(p, 2, left) <= 0 || p[1].revents != 0) return;  // too slow, or stopping: just close
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return;
    }
    request.append(buf, static_cast<size_t>(n));
  }
  std::string out = request.size() > options_.max_request
                        ? plain("431 Request Header Fields Too Large", "request too large\n")
                        : answer(request, render_);
  std::string_view rest = out;
  while (!rest.empty()) {
    ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n > 0) {
      rest.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p[2] = {{fd, POLLOUT, 0}, {wake_.fd(), POLLIN, 0}};
      int left = ms_left(deadline);
      if (left > 0 && ::poll(p, 2, left) > 0 && p[1].revents == 0) continue;
    }
    return;
  }
  ::shutdown(fd, SHUT_WR);
}

std::string MetricsServer::answer(std::string_view request, const std::function<std::string()>& render) {
  std::string_view line = request.substr(0, request.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // METHOD SP TARGET SP HTTP/x.y
  size_t a = line.find(' ');
  size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  if (b == std::string_view::npos || line.substr(b + 1).substr(0, 5) != "HTTP/")
    return plain("400 Bad Request", "bad request\n");
  std::string_view method = line.substr(0, a), target = line.substr(a + 1, b - a - 1);
  std::string_view path = target.substr(0, target.find('?'));
  if (path != "/metrics") return plain("404 Not Found", "not found: the metrics are at /metrics\n");
  if (method != "GET") return response("405 Method Not Allowed", "text/plain", "GET only\n", "Allow: GET\r\n");
  return response("200 OK", "text/plain; version=0.0.4; charset=utf-8", render());
}

}  // namespace multisnap
