#include "nbd/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <string_view>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <system_error>
#include <thread>

#include "nbd/connection.h"
#include "nbd/listener.h"
#include "util/log.h"

namespace multisnap::nbd {
namespace {

using Clock = std::chrono::steady_clock;

// Connections refused or dropped before transmission are summed up in the
// log at most this often, so a flood does not flood the log too.
constexpr auto kDropReportInterval = std::chrono::seconds(10);

// max_negotiating, lowered so that handshakes (two descriptors each) hold at
// most a quarter of the process's descriptors: the rest stays for
// established clients, the store and the control socket.
uint32_t negotiating_cap(uint32_t max_negotiating) {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return max_negotiating;
  uint64_t share = std::max<uint64_t>(rl.rlim_cur / 8, 1);
  if (share >= max_negotiating) return max_negotiating;
  MS_LOG_INFO("nbd: at most {} connections negotiating at once (a quarter of the {} open files)",
              share, rl.rlim_cur);
  return static_cast<uint32_t>(share);
}

}  // namespace

class Server::Impl final : public ConnectionHost {
 public:
  Impl(Backend& backend, ServerOptions options, std::vector<Listener> listeners, WakeFd wake,
       std::shared_ptr<const TlsCredentials> tls);
  ~Impl() override { stop(); }

  Status start_accepting();
  void stop();
  std::vector<ListenAddress> listen_addresses() const { return bound_; }
  size_t count_connections(const ExportMatcher& match) const;
  size_t disconnect(const ExportMatcher& match);
  std::vector<ConnectionInfo> connections() const;
  ServerStats stats() const;

  // ConnectionHost
  Backend& backend() override { return backend_; }
  std::shared_mutex& open_gate() override { return open_gate_; }
  Status export_selected(uint64_t id, const std::string& canonical_name) override;
  void handshake_timed_out() override { handshake_timeouts_.fetch_add(1); }
  void tls_handshake_failed() override { tls_failures_.fetch_add(1); }
  Result<uint64_t> serve_stream(int in, int out);
  void client_spoke(uint64_t id) override;
  void add_counters(const TransmissionCounters& delta) override;
  void protocol_violation() override { protocol_violations_.fetch_add(1); }
  void connection_finished(uint64_t id, const std::string& reason) override;

 private:
  struct Record {
    std::unique_ptr<Connection> conn;
    std::string peer;
    bool has_export = false;
    std::string export_name;
    bool finished = false;
  };

  void accept_loop();
  void accept_from(const Listener& listener);
  // Returns the new connection's id, 0 if it was refused or dropped.
  uint64_t add_connection(std::unique_ptr<Transport> transport, std::string peer);
  // Asks the oldest silent connection still negotiating (else the oldest of
  // all), other than `spare`, to close; false if there is none.
  bool evict_oldest_negotiating(uint64_t spare = 0);
  // Out of descriptors or threads: evicts the oldest handshake (not `spare`)
  // and gives it a moment to release its resources; false if there is none.
  bool make_room(uint64_t spare = 0);
  void reap_finished();
  // Logs what was refused or dropped since the last report, at most once per
  // kDropReportInterval. Returns the poll timeout (ms) until a deferred
  // report is due, or -1.
  int report_drops();
  void notify(const ConnectionEvent& event) const;
  bool all_finished(const std::vector<uint64_t>& ids) const;  // needs mu_

  Backend& backend_;
  const ServerOptions options_;
  const uint32_t max_negotiating_;
  ConnectionOptions connection_options_;
  std::vector<Listener> listeners_;  // accept thread's
  std::vector<ListenAddress> bound_;
  WakeFd accept_wake_;
  std::thread accept_thread_;

  std::mutex stop_mu_;  // serialises stop()
  bool stopped_ = false;

  mutable std::mutex mu_;
  std::condition_variable finished_cv_;
  std::map<uint64_t, Record> records_;  // guarded by mu_
  // Connections still negotiating and not asked to close, oldest first
  // (ids grow with time). Guarded by mu_.
  std::set<uint64_t> negotiating_;
  std::set<uint64_t> silent_;  // those of negotiating_ that have not sent a byte
  uint64_t established_ = 0;  // records with has_export and not finished; guarded by mu_
  bool stopping_ = false;     // guarded by mu_
  std::mutex add_mu_;         // serialises add_connection()
  uint64_t next_id_ = 1;      // guarded by add_mu_
  // Accept thread's: what report_drops() has logged so far.
  uint64_t reported_refused_ = 0, reported_timeouts_ = 0, reported_evicted_ = 0;
  Clock::time_point next_report_{};
  std::shared_mutex open_gate_;

  std::atomic<uint64_t> connections_now_{0};
  std::atomic<uint64_t> connections_total_{0};
  std::atomic<uint64_t> connections_refused_{0};
  std::atomic<uint64_t> handshake_timeouts_{0};
  std::atomic<uint64_t> handshakes_evicted_{0};
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> bytes_written_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> protocol_violations_{0};
  std::atomic<uint64_t> tls_failures_{0};
};

Server::Impl::Impl(Backend& backend, ServerOptions options, std::vector<Listener> listeners,
                   WakeFd wake, std::shared_ptr<const TlsCredentials> tls)
    : backend_(backend),
      options_(std::move(options)),
      max_negotiating_(negotiating_cap(options_.max_negotiating)),
      listeners_(std::move(listeners)),
      accept_wake_(std::move(wake)) {
  connection_options_.limits.max_requests = options_.max_requests_per_connection;
  connection_options_.limits.max_bytes = options_.max_bytes_per_connection;
  connection_options_.max_option_length = options_.max_option_length;
  connection_options_.drain_timeout = options_.drain_timeout;
  connection_options_.handshake_timeout = options_.handshake_timeout;
  connection_options_.tls = options_.tls;
  connection_options_.tls_credentials = std::move(tls);
  for (const Listener& l : listeners_) bound_.push_back(l.bound());
}

Status Server::Impl::start_accepting() {
  try {
    accept_thread_ = std::thread([this] { accept_loop(); });
  } catch (const std::system_error& e) {
    return make_error(Code::kIoError, "cannot start the NBD accept thread: {}", e.what());
  }
  // The daemon logs where it listens (once, with the rest of what it serves).
  if (connection_options_.tls_credentials) {
    MS_LOG_INFO("nbd: TLS {} ({})", options_.tls == TlsMode::kRequire ? "required" : "offered",
                connection_options_.tls_credentials->describe());
  }
  return Status::ok();
}

// ---- Accepting

void Server::Impl::accept_loop() {
  std::vector<pollfd> fds;
  for (const Listener& l : listeners_) fds.push_back({l.fd(), POLLIN, 0});
  fds.push_back({accept_wake_.fd(), POLLIN, 0});
  int timeout = -1;
  for (;;) {
    int rc = poll(fds.data(), fds.size(), timeout);
    timeout = -1;
    if (rc < 0 && errno != EINTR) {
      MS_LOG_ERROR("nbd: poll on listening sockets failed: {}", std::strerror(errno));
      timeout = 100;
      continue;
    }
    if (fds.back().revents) accept_wake_.clear();
    {
      std::lock_guard lock(mu_);
      if (stopping_) break;
    }
    reap_finished();
    for (size_t i = 0; i + 1 < fds.size(); ++i) {
      if (fds[i].revents) accept_from(listeners_[i]);
    }
    timeout = report_drops();
  }
  listeners_.clear();  // closes the sockets and removes unix socket files
}

void Server::Impl::accept_from(const Listener& listener) {
  for (;;) {
    int fd = accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      if (listener.bound().kind == ListenAddress::Kind::kTcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      }
      std::string peer = describe_peer(fd);
      add_connection(std::make_unique<SocketTransport>(UniqueFd(fd)), std::move(peer));
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    // Out of descriptors: the oldest handshake gives its socket to the new client.
    if ((errno == EMFILE || errno == ENFILE) && make_room()) return;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      MS_LOG_WARN("nbd: accept on {} failed: {}", listener.bound().to_string(),
                  std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // EMFILE: back off
    }
    return;
  }
}

uint64_t Server::Impl::add_connection(std::unique_ptr<Transport> transport, std::string peer) {
  std::lock_guard adding(add_mu_);  // the accept thread and serve_stream()
  connections_total_.fetch_add(1);
  bool full = false, crowded = false;
  {
    std::lock_guard lock(mu_);
    full = established_ >= options_.max_connections;
    crowded = negotiating_.size() >= max_negotiating_;
  }
  if (full) {
    MS_LOG_DEBUG("nbd: refusing client {}: {} connections already", peer, options_.max_connections);
    connections_refused_.fetch_add(1);
    return 0;
  }
  // Only this thread adds negotiating connections, so there is room after this.
  if (crowded) evict_oldest_negotiating();
  // eventfd and thread creation fail only for lack of descriptors, threads or
  // memory; a handshake that gives way frees all three.
  constexpr int kTries = 3;
  auto wake = WakeFd::create();
  for (int i = 1; i < kTries && !wake.is_ok() && make_room(); ++i) wake = WakeFd::create();
  if (!wake.is_ok()) {
    MS_LOG_WARN("nbd: dropping client {}: {}", peer, wake.status().to_string());
    return 0;
  }
  uint64_t id = next_id_++;
  auto conn = Connection::create(id, std::move(transport), std::move(wake).value(), peer, *this,
                                 connection_options_);
  MS_LOG_DEBUG("nbd: connection {} from {}", id, peer);
  notify({ConnectionEvent::Kind::kOpened, id, peer, "", ""});
  Connection* raw = conn.get();
  {
    std::lock_guard lock(mu_);
    records_[id] = Record{std::move(conn), peer};
    negotiating_.insert(id);
    silent_.insert(id);
  }
  connections_now_.fetch_add(1);
  Status started = raw->start();
  for (int i = 1; i < kTries && !started.is_ok() && make_room(id); ++i) started = raw->start();
  if (!started.is_ok()) {
    MS_LOG_WARN("nbd: dropping client {}: {}", peer, started.to_string());
    connection_finished(id, started.to_string());
    return 0;
  }
  return id;
}

Result<uint64_t> Server::Impl::serve_stream(int in, int out) {
  UniqueFd in_fd(in), out_fd(out);
  {
    std::lock_guard state(mu_);
    if (stopping_) return make_error(Code::kShutdown, "the NBD server is stopping");
  }
  uint64_t id = add_connection(make_stream_transport(std::move(in_fd), std::move(out_fd)), "stdio");
  if (id == 0) return make_error(Code::kIoError, "cannot serve the client on standard input and output");
  return id;
}

bool Server::Impl::evict_oldest_negotiating(uint64_t spare) {
  std::lock_guard lock(mu_);
  auto oldest = [spare](const std::set<uint64_t>& ids) {
    auto it = ids.begin();
    if (it != ids.end() && *it == spare) ++it;
    return it == ids.end() ? 0 : *it;
  };
  uint64_t id = oldest(silent_);
  if (id == 0) id = oldest(negotiating_);
  if (id == 0) return false;
  negotiating_.erase(id);
  silent_.erase(id);
  records_.at(id).conn->request_close(Connection::CloseRequest::kEvicted);
  handshakes_evicted_.fetch_add(1);
  return true;
}

bool Server::Impl::make_room(uint64_t spare) {
  if (!evict_oldest_negotiating(spare)) return false;
  std::this_thread::sleep_for(std::chrono::milliseconds(1));
  reap_finished();  // its eventfd goes with the Connection object
  return true;
}

int Server::Impl::report_drops() {
  uint64_t refused = connections_refused_.load();
  uint64_t timeouts = handshake_timeouts_.load();
  uint64_t evicted = handshakes_evicted_.load();
  if (refused == reported_refused_ && timeouts == reported_timeouts_ &&
      evicted == reported_evicted_) {
    return -1;
  }
  Clock::time_point now = Clock::now();
  if (now < next_report_) {
    return static_cast<int>(
        std::chrono::ceil<std::chrono::milliseconds>(next_report_ - now).count());
  }
  std::string parts;
  auto add = [&parts](uint64_t n, const std::string& what) {
    if (n == 0) return;
    parts += fmt::format("{}{} {}", parts.empty() ? "" : "; ", n, what);
  };
  add(refused - reported_refused_,
      fmt::format("connections refused: {} already established", options_.max_connections));
  add(timeouts - reported_timeouts_,
      fmt::format("connections dropped for not finishing the handshake within {} ms",
                  options_.handshake_timeout.count()));
  add(evicted - reported_evicted_,
      fmt::format("connections dropped to make room for newer handshakes ({} negotiating at most)",
                  max_negotiating_));
  if (refused != reported_refused_) {
    MS_LOG_WARN("nbd: {}", parts);
  } else {
    MS_LOG_INFO("nbd: {}", parts);
  }
  reported_refused_ = refused;
  reported_timeouts_ = timeouts;
  reported_evicted_ = evicted;
  next_report_ = now + kDropReportInterval;
  return -1;
}

void Server::Impl::reap_finished() {
  std::vector<std::unique_ptr<Connection>> done;
  {
    std::lock_guard lock(mu_);
    for (auto it = records_.begin(); it != records_.end();) {
      if (!it->second.finished) {
        ++it;
        continue;
      }
      done.push_back(std::move(it->second.conn));
      it = records_.erase(it);
    }
  }
  done.clear();  // joins the threads, which have finished or are about to
}

// ---- Connection reports

void Server::Impl::client_spoke(uint64_t id) {
  std::lock_guard lock(mu_);
  silent_.erase(id);
}

Status Server::Impl::export_selected(uint64_t id, const std::string& canonical_name) {
  std::lock_guard lock(mu_);
  auto it = records_.find(id);
  silent_.erase(id);
  if (it == records_.end() || negotiating_.erase(id) == 0) {
    return make_error(Code::kBusy, "{}", kEvictedReason);  // lost the race with eviction
  }
  if (established_ >= options_.max_connections) {
    connections_refused_.fetch_add(1);
    accept_wake_.wake();  // report it
    return make_error(Code::kBusy, "refused: {} connections already", options_.max_connections);
  }
  it->second.has_export = true;
  it->second.export_name = canonical_name;
  ++established_;
  return Status::ok();
}

void Server::Impl::add_counters(const TransmissionCounters& delta) {
  requests_.fetch_add(delta.requests, std::memory_order_relaxed);
  bytes_read_.fetch_add(delta.bytes_read, std::memory_order_relaxed);
  bytes_written_.fetch_add(delta.bytes_written, std::memory_order_relaxed);
  errors_.fetch_add(delta.errors, std::memory_order_relaxed);
}

namespace {
// The reasons Connection gives when the client ended the connection itself.
bool client_went_away(std::string_view reason) {
  for (std::string_view r : {"client closed the connection", "client disconnected (NBD_CMD_DISC)",
                             "send failed: Broken pipe", "send failed: Connection reset by peer",
                             "recv failed: Connection reset by peer"})
    if (reason.substr(0, r.size()) == r) return true;
  return false;
}
}  // namespace

void Server::Impl::connection_finished(uint64_t id, const std::string& reason) {
  ConnectionEvent event{ConnectionEvent::Kind::kClosed, id, "", "", reason};
  {
    std::lock_guard lock(mu_);
    auto it = records_.find(id);
    if (it != records_.end()) {
      event.peer = it->second.peer;
      event.export_name = it->second.export_name;
    }
  }
  // Connections that never reached transmission (listings, probes, dropped
  // handshakes) are only logged at debug level: a flood of them is summed up
  // by report_drops() instead.
  // A client that goes away (closes, sends NBD_CMD_DISC, or resets while
  // its last replies are sent, as `nbdinfo --list` does) is routine: debug.
  LogLevel level = event.export_name.empty() || client_went_away(reason) ? LogLevel::kDebug : LogLevel::kInfo;
  log(level, "nbd: connection {} ({}) closed: {}", id, event.peer, reason);
  notify(event);
  {
    std::lock_guard lock(mu_);
    auto it = records_.find(id);
    if (it != records_.end()) {
      if (it->second.has_export && !it->second.finished) --established_;
      it->second.finished = true;
    }
    negotiating_.erase(id);
    silent_.erase(id);
    connections_now_.fetch_sub(1);
  }
  finished_cv_.notify_all();
  accept_wake_.wake();  // reap it
}

void Server::Impl::notify(const ConnectionEvent& event) const {
  if (options_.on_connection) options_.on_connection(event);
}

// ---- Control

size_t Server::Impl::count_connections(const ExportMatcher& match) const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [id, r] : records_) {
    if (!r.finished && r.has_export && match(r.export_name)) ++n;
  }
  return n;
}

bool Server::Impl::all_finished(const std::vector<uint64_t>& ids) const {
  for (uint64_t id : ids) {
    auto it = records_.find(id);
    if (it != records_.end() && !it->second.finished) return false;
  }
  return true;
}

size_t Server::Impl::disconnect(const ExportMatcher& match) {
  std::vector<uint64_t> victims;
  {
    std::unique_lock gate(open_gate_);  // no connection is between open and report
    std::lock_guard lock(mu_);
    for (auto& [id, r] : records_) {
      if (r.finished || !r.has_export || !match(r.export_name)) continue;
      r.conn->request_close(Connection::CloseRequest::kForced);
      victims.push_back(id);
    }
  }
  std::unique_lock lock(mu_);
  finished_cv_.wait(lock, [&] { return all_finished(victims); });
  return victims.size();
}

std::vector<ConnectionInfo> Server::Impl::connections() const {
  std::lock_guard lock(mu_);
  std::vector<ConnectionInfo> out;
  for (const auto& [id, r] : records_) {
    if (!r.finished) out.push_back({id, r.peer, r.has_export, r.export_name});
  }
  return out;
}

ServerStats Server::Impl::stats() const {
  ServerStats s;
  {
    std::lock_guard lock(mu_);
    s.connections_negotiating = negotiating_.size();
  }
  s.connections_now = connections_now_.load();
  s.connections_total = connections_total_.load();
  s.connections_refused = connections_refused_.load();
  s.handshake_timeouts = handshake_timeouts_.load();
  s.handshakes_evicted = handshakes_evicted_.load();
  s.requests = requests_.load();
  s.bytes_read = bytes_read_.load();
  s.bytes_written = bytes_written_.load();
  s.errors = errors_.load();
  s.protocol_violations = protocol_violations_.load();
  s.tls_handshake_failures = tls_failures_.load();
  return s;
}

void Server::Impl::stop() {
  std::lock_guard stop_lock(stop_mu_);
  if (stopped_) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  accept_wake_.wake();
  if (accept_thread_.joinable()) accept_thread_.join();
  std::vector<uint64_t> all;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, r] : records_) {
      r.conn->request_close(Connection::CloseRequest::kShutdown);
      all.push_back(id);
    }
  }
  {
    std::unique_lock lock(mu_);
    finished_cv_.wait(lock, [&] { return all_finished(all); });
  }
  reap_finished();
  stopped_ = true;
  MS_LOG_INFO("nbd: server stopped");
}

// ---- Server

Result<std::unique_ptr<Server>> Server::start(Backend& backend, ServerOptions options) {
  if (options.listen.empty() && options.listen_fds.empty() && !options.stream_only) {
    return make_error(Code::kInvalidArgument, "the NBD server needs an address to listen on");
  }
  // Inherited sockets are ours from here on, whatever fails below.
  std::vector<Listener> listeners;
  Status adopted;
  for (int fd : options.listen_fds) {
    auto l = Listener::adopt(fd);
    if (l.is_ok()) {
      listeners.push_back(std::move(l).value());
    } else if (adopted.is_ok()) {
      adopted = l.status();
    }
  }
  MS_TRY(adopted);
  if (options.max_requests_per_connection == 0 || options.max_connections == 0 ||
      options.max_negotiating == 0) {
    return make_error(Code::kInvalidArgument, "NBD connection limits must be positive");
  }
  if (options.handshake_timeout.count() < 0) {
    return make_error(Code::kInvalidArgument, "the NBD handshake timeout cannot be negative");
  }
  // Room for the longest legal name plus the rest of an option, and no more
  // than the server is willing to skip.
  if (options.max_option_length < 8192 ||
      options.max_option_length > Negotiation::kMaxSkippedOptionLength) {
    return make_error(Code::kInvalidArgument, "NBD max_option_length must be in [8 KiB, {}]",
                      Negotiation::kMaxSkippedOptionLength);
  }
  std::shared_ptr<const TlsCredentials> tls;
  if (options.tls != TlsMode::kOff) {
    MS_ASSIGN_OR_RETURN(tls, TlsCredentials::load(options.tls_credentials));
  }
  for (const std::string& spec : options.listen) {
    MS_ASSIGN_OR_RETURN(ListenAddress address, parse_listen_address(spec));
    MS_ASSIGN_OR_RETURN(Listener listener, Listener::open(address, options.unix_socket_mode));
    listeners.push_back(std::move(listener));
  }
  MS_ASSIGN_OR_RETURN(WakeFd wake, WakeFd::create());
  auto impl = std::make_unique<Impl>(backend, std::move(options), std::move(listeners),
                                     std::move(wake), std::move(tls));
  MS_TRY(impl->start_accepting());
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() {
  stop();
}
void Server::stop() {
  impl_->stop();
}

Result<uint64_t> Server::serve_stream(int in, int out) {
  return impl_->serve_stream(in, out);
}

std::vector<std::string> Server::addresses() const {
  std::vector<std::string> out;
  for (const ListenAddress& a : impl_->listen_addresses()) out.push_back(a.to_string());
  return out;
}

std::vector<ListenAddress> Server::listen_addresses() const {
  return impl_->listen_addresses();
}

size_t Server::count_connections(const ExportMatcher& match) const {
  return impl_->count_connections(match);
}

size_t Server::disconnect(const ExportMatcher& match) {
  return impl_->disconnect(match);
}
std::vector<ConnectionInfo> Server::connections() const {
  return impl_->connections();
}
ServerStats Server::stats() const {
  return impl_->stats();
}

}  // namespace multisnap::nbd
