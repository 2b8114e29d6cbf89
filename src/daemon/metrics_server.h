// MetricsServer: the few lines of HTTP/1.1 a Prometheus scrape needs
// (docs/design.md, "Metrics"): GET /metrics answers the text exposition
// format, anything else 404 (405 for other methods, 400 for what is not a
// request line, 431 for a request over 8 KiB); every answer closes the
// connection. One thread serves one connection at a time, each with 5
// seconds to send its request and take its answer, so a stuck client
// delays scrapes by at most that and holds no more than one descriptor.
//
// Thread-safe: start() and the destructor (which stops and joins) from one
// thread; `render` runs on the server's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "nbd/listener.h"
#include "nbd/socket_util.h"
#include "util/status.h"

namespace multisnap {

class MetricsServer {
 public:
  struct Options {
    std::string listen;  // "tcp:HOST:PORT" (HOST empty: 127.0.0.1; PORT 0: any free port)
    std::chrono::milliseconds timeout{5000};
    size_t max_request = 8192;
  };
  static Result<std::unique_ptr<MetricsServer>> start(const Options& options, std::function<std::string()> render);
  ~MetricsServer();

  std::string address() const;  // where it listens, with the real port

  // The answer to one request (exposed for tests): the whole HTTP response.
  static std::string answer(std::string_view request, const std::function<std::string()>& render);

 private:
  MetricsServer(nbd::Listener listener, nbd::WakeFd wake, Options options, std::function<std::string()> render)
      : listener_(std::move(listener)), wake_(std::move(wake)), options_(std::move(options)), render_(std::move(render)) {}
  void loop();
  void serve_one(int fd);

  nbd::Listener listener_;
  nbd::WakeFd wake_;
  Options options_;
  std::function<std::string()> render_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace multisnap
