#include "nbd/connection.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <system_error>

#include "util/log.h"

namespace multisnap::nbd {
namespace {

constexpr size_t kInputBufferSize = 256u << 10;
// Compact the input buffer when less than this is free at its end.
constexpr size_t kMinRecvSpace = 64u << 10;
constexpr int kMaxIov = 512;

using Clock = std::chrono::steady_clock;

bool would_block(int err) {
  return err == EAGAIN || err == EWOULDBLOCK;
}

Clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  if (timeout.count() <= 0) return Clock::time_point::max();
  return Clock::now() + std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
}

}  // namespace

// ---- InputBuffer

Connection::InputBuffer::InputBuffer(size_t capacity)
    : buf_(new uint8_t[capacity]), capacity_(capacity) {}

void Connection::InputBuffer::consume(size_t n) {
  begin_ += n;
  if (begin_ == end_) begin_ = end_ = 0;
}

void Connection::InputBuffer::compact() {
  if (begin_ == 0) return;
  std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
  end_ -= begin_;
  begin_ = 0;
}

// ---- Life cycle

std::unique_ptr<Connection> Connection::create(uint64_t id, std::unique_ptr<Transport> transport,
                                               WakeFd wake, std::string peer, ConnectionHost& host,
                                               const ConnectionOptions& options) {
  return std::unique_ptr<Connection>(
      new Connection(id, std::move(transport), std::move(peer), host, options, std::move(wake)));
}

Connection::Connection(uint64_t id, std::unique_ptr<Transport> transport, std::string peer,
                       ConnectionHost& host, const ConnectionOptions& options, WakeFd wake)
    : id_(id),
      transport_(std::move(transport)),
      peer_(std::move(peer)),
      host_(host),
      options_(options),
      wake_(std::move(wake)),
      handshake_deadline_(deadline_after(options.handshake_timeout)),
      in_(std::max<size_t>(kInputBufferSize, options.max_option_length + 1024)) {}

Connection::~Connection() {
  join();
}

Status Connection::start() {
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    return make_error(Code::kIoError, "cannot start a connection thread: {}", e.what());
  }
  return Status::ok();
}

void Connection::join() {
  if (thread_.joinable()) thread_.join();
}

void Connection::request_close(CloseRequest why) {
  int expected = 0;
  close_request_.compare_exchange_strong(expected, static_cast<int>(why));
  wake_.wake();
}

void Connection::set_reason(std::string reason) {
  if (reason_.empty()) reason_ = std::move(reason);
}

bool Connection::closing() {
  CloseRequest why = close_request();
  if (why == CloseRequest::kNone) return false;
  switch (why) {
    case CloseRequest::kForced: set_reason("disconnected by the server"); break;
    case CloseRequest::kEvicted: set_reason(std::string(kEvictedReason)); break;
    default: set_reason("server shutting down"); break;
  }
  return true;
}

void Connection::run() {
  {
    NegotiatedExport negotiated;
    if (negotiate(&negotiated)) {
      std::string security = transport_->describe_security();
      MS_LOG_INFO("nbd: connection {} ({}{}{}) uses export '{}'", id_, peer_,
                  security.empty() ? "" : ", ", security, negotiated.exp->info().name);
      transmit(std::move(negotiated));
    }
    // The Export, if any, is destroyed here, before the host hears of the end.
  }
  if (transport_) {  // null only when a TLS session could not be set up
    transport_->close_gracefully();
    transport_->shutdown();
    transport_.reset();
  }
  set_reason("closed");
  host_.connection_finished(id_, reason_);
}

// ---- Handshake

bool Connection::negotiate(NegotiatedExport* out) {
  Negotiation negotiation(host_.backend(), options_.max_option_length, options_.tls);
  std::string reply;
  Negotiation::append_greeting(&reply);
  for (;;) {
    if (!reply.empty() && !send_all(reply)) return false;
    reply.clear();
    switch (negotiation.state()) {
      case Negotiation::State::kOptions: break;
      case Negotiation::State::kStartTls:
        if (in_.size() > 0) {
          // The client may not speak before the TLS handshake: bytes sent in
          // the clear after STARTTLS would be taken as coming through TLS.
          MS_LOG_WARN("nbd: connection {} ({}): data after NBD_OPT_STARTTLS before the TLS handshake",
                      id_, peer_);
          host_.protocol_violation();
          set_reason("protocol violation: data after STARTTLS");
          return false;
        }
        if (!start_tls()) return false;
        negotiation.tls_started();
        continue;
      case Negotiation::State::kTransmission: return true;
      case Negotiation::State::kAborted: set_reason("client aborted the handshake"); return false;
      case Negotiation::State::kFailed:
        MS_LOG_WARN("nbd: connection {} ({}): handshake failed: {}", id_, peer_,
                    negotiation.failure());
        host_.protocol_violation();
        set_reason("handshake failed: " + negotiation.failure());
        return false;
    }
    size_t used = 0;
    if (in_.size() > 0) {
      std::shared_lock gate(host_.open_gate());
      used = negotiation.consume(in_.data(), in_.size(), &reply);
      if (negotiation.state() == Negotiation::State::kTransmission) {
        *out = negotiation.take_export();
        Status admitted = host_.export_selected(id_, out->exp->info().name);
        if (!admitted.is_ok()) {
          set_reason(admitted.message());
          return false;  // the final reply is never sent
        }
        handshake_deadline_ = Clock::time_point::max();  // admitted: no deadline from here on
      }
    }
    in_.consume(used);
    bool progress = used > 0 || !reply.empty();
    if (!progress && negotiation.state() == Negotiation::State::kOptions && !receive_more()) {
      return false;
    }
  }
}

bool Connection::send_all(std::string_view data) {
  while (!data.empty()) {
    if (closing() || handshake_expired()) return false;
    iovec iov{const_cast<char*>(data.data()), data.size()};
    ssize_t n = transport_->send(&iov, 1);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && would_block(errno)) {
      if (!wait_socket(POLLOUT)) return false;
    } else {
      set_reason(fmt::format("send failed: {}", transport_->last_error()));
      return false;
    }
  }
  return true;
}

bool Connection::receive_more() {
  in_.compact();
  for (;;) {
    if (closing() || handshake_expired()) return false;
    ssize_t n = transport_->receive(in_.tail(), in_.space());
    if (n > 0) {
      in_.produced(static_cast<size_t>(n));
      if (!spoke_) host_.client_spoke(id_);
      spoke_ = true;
      return true;
    }
    if (n == 0) {
      set_reason("client closed the connection during the handshake");
      return false;
    }
    if (errno == EINTR) continue;
    if (!would_block(errno)) {
      set_reason(fmt::format("recv failed: {}", transport_->last_error()));
      return false;
    }
    if (!wait_socket(POLLIN)) return false;
  }
}

bool Connection::wait_socket(short events) {
  for (;;) {
    if (handshake_expired()) return false;
    short got = 0;
    bool woken = false;
    int rc = poll_io(events, handshake_time_left(), &got, &woken);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return false;
    if (rc == 0) continue;  // the deadline passed
    if (woken) wake_.clear();
    if (closing()) return false;
    if (got) return true;
  }
}

int Connection::poll_io(short events, int timeout_ms, short* got, bool* woken) {
  int in = events & POLLIN ? transport_->in_fd() : -1;
  int out = events & POLLOUT ? transport_->out_fd() : -1;
  pollfd fds[3];
  int n = 0;
  int in_slot = -1, out_slot = -1;
  if (in >= 0 && in == out) {
    fds[n] = {in, events, 0};
    in_slot = out_slot = n++;
  } else {
    if (in >= 0) {
      fds[n] = {in, POLLIN, 0};
      in_slot = n++;
    }
    if (out >= 0) {
      fds[n] = {out, POLLOUT, 0};
      out_slot = n++;
    }
  }
  fds[n] = {wake_.fd(), POLLIN, 0};
  int wake_slot = n++;
  int rc = poll(fds, static_cast<nfds_t>(n), timeout_ms);
  *got = 0;
  *woken = false;
  if (rc <= 0) return rc;
  if (in_slot >= 0) {
    short r = fds[in_slot].revents;
    // On a pipe (stdio mode: input and output are different descriptors) a
    // hang-up on the input only says the client closed its writing end; it
    // may still be reading replies. That is the end of input, not of the
    // connection: read() returns 0 and input stops.
    if (in_slot != out_slot && (r & POLLHUP)) r = static_cast<short>((r & ~POLLHUP) | POLLIN);
    *got |= r;
  }
  if (out_slot >= 0 && out_slot != in_slot) *got |= fds[out_slot].revents;
  *woken = fds[wake_slot].revents != 0;
  return rc;
}

bool Connection::start_tls() {
  auto tls = TlsTransport::create(options_.tls_credentials, std::move(transport_));
  if (!tls.is_ok()) {
    // The lower transport is gone with the failed session: nothing to close.
    MS_LOG_WARN("nbd: connection {} ({}): {}", id_, peer_, tls.status().to_string());
    set_reason(tls.status().to_string());
    return false;
  }
  TlsTransport* session = tls->get();
  transport_ = std::move(tls).value();
  for (;;) {
    if (closing() || handshake_expired()) return false;
    TlsTransport::Step step = session->handshake();
    if (step == TlsTransport::Step::kDone) break;
    if (step == TlsTransport::Step::kFailed) {
      MS_LOG_WARN("nbd: connection {} ({}): TLS handshake failed: {}", id_, peer_,
                  session->last_error());
      host_.tls_handshake_failed();
      set_reason("TLS handshake failed: " + session->last_error());
      return false;
    }
    if (!wait_socket(step == TlsTransport::Step::kWantWrite ? POLLOUT : POLLIN)) return false;
  }
  MS_LOG_DEBUG("nbd: connection {} ({}): {}", id_, peer_, transport_->describe_security());
  return true;
}

int Connection::handshake_time_left() const {
  if (handshake_deadline_ == Clock::time_point::max()) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(handshake_deadline_ - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

bool Connection::handshake_expired() {
  if (handshake_time_left() != 0) return false;
  MS_LOG_DEBUG("nbd: connection {} ({}): no handshake within {} ms; dropping it", id_, peer_,
               options_.handshake_timeout.count());
  set_reason(fmt::format("no handshake within {} ms", options_.handshake_timeout.count()));
  host_.handshake_timed_out();
  return true;
}

// ---- Transmission

void Connection::transmit(NegotiatedExport negotiated) {
  Transmission tx(std::move(negotiated), options_.limits, [this] { wake_.wake(); });
  LoopState st;
  for (;;) {
    handle_close_request(tx, st);
    bool progress = read_requests(tx, st);
    if (tx.broken() && !st.peer_gone) {
      MS_LOG_WARN("nbd: connection {} ({}): {}; dropping it", id_, peer_, tx.failure());
      host_.protocol_violation();
      set_reason("protocol violation: " + tx.failure());
      transport_->shutdown();  // the client sees the drop now
      st.peer_gone = true;
      tx.stop_input();
    }
    tx.collect_completions();
    publish_counters(tx);  // before the replies, so clients never see stale counters
    if (st.peer_gone) tx.discard_output();
    progress |= send_replies(tx, st);
    if (tx.finished()) break;
    // Only sleep when nothing moved: freed slots may let buffered requests in.
    if (!progress) sleep(tx, st);
  }
  if (tx.disconnect_requested()) set_reason("client disconnected (NBD_CMD_DISC)");
}

void Connection::handle_close_request(Transmission& tx, LoopState& st) {
  if (st.draining || !closing()) return;
  st.draining = true;
  st.drain_deadline = std::chrono::steady_clock::now() + options_.drain_timeout;
  tx.stop_input();
}

bool Connection::read_requests(Transmission& tx, LoopState& st) {
  bool progress = false;
  if (tx.wants_input() && in_.size() > 0) {
    size_t used = tx.consume(in_.data(), in_.size());
    in_.consume(used);
    progress = used > 0;
  }
  while (tx.wants_input() && st.readable) {
    std::span<uint8_t> direct = in_.size() == 0 ? tx.direct_payload() : std::span<uint8_t>{};
    uint8_t* dest = direct.empty() ? nullptr : direct.data();
    size_t want = direct.size();
    if (dest == nullptr) {
      if (in_.space() < kMinRecvSpace) in_.compact();
      dest = in_.tail();
      want = in_.space();
      if (want == 0) break;  // a full buffer of requests waits for free slots
    }
    ssize_t n = transport_->receive(dest, want);
    if (n > 0) {
      progress = true;
      if (!direct.empty()) {
        tx.direct_payload_received(static_cast<size_t>(n));
      } else {
        in_.produced(static_cast<size_t>(n));
        in_.consume(tx.consume(in_.data(), in_.size()));
      }
      // A short read means the socket is (almost surely) drained: poll next.
      if (static_cast<size_t>(n) < want) st.readable = false;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && would_block(errno)) {
      st.readable = false;
      break;
    }
    progress = true;
    if (n == 0) {
      set_reason("client closed the connection");
    } else {
      set_reason(fmt::format("recv failed: {}", transport_->last_error()));
      st.peer_gone = true;
    }
    tx.stop_input();
  }
  return progress;
}

bool Connection::send_replies(Transmission& tx, LoopState& st) {
  struct iovec iov[kMaxIov];
  bool progress = false;
  while (tx.has_output() && st.writable && !st.peer_gone) {
    int count = tx.gather_output(iov, kMaxIov);
    ssize_t n = transport_->send(iov, count);
    if (n > 0) {
      tx.output_sent(static_cast<size_t>(n));
      progress = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && would_block(errno)) {
      st.writable = false;
      break;
    }
    set_reason(fmt::format("send failed: {}", transport_->last_error()));
    st.peer_gone = true;
    tx.stop_input();
    tx.discard_output();
    progress = true;
  }
  return progress;
}

void Connection::sleep(Transmission& tx, LoopState& st) {
  int timeout = -1;
  if (st.draining && tx.has_output()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        st.drain_deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      set_reason("client did not take its replies");
      st.peer_gone = true;
      tx.discard_output();
      return;
    }
    timeout = static_cast<int>(left.count()) + 1;
  }
  if (st.hung_up && !st.readable) tx.stop_input();  // nothing more will arrive
  short events = 0;
  if (tx.wants_input() && !st.readable) events |= POLLIN;
  if (tx.has_output() && !st.writable && !st.peer_gone) events |= POLLOUT;
  bool poll_socket = events != 0 && !st.hung_up && !st.peer_gone;
  if (!tx.prepare_to_sleep()) return;
  short got = 0;
  bool woken = false;
  int rc = poll_io(poll_socket ? events : 0, timeout, &got, &woken);
  tx.woke();
  if (rc <= 0) return;
  if (woken) wake_.clear();
  if (got & (POLLIN | POLLHUP | POLLERR)) st.readable = true;
  if (got & (POLLOUT | POLLHUP | POLLERR)) st.writable = true;
  if (got & (POLLHUP | POLLERR)) st.hung_up = true;
}

void Connection::publish_counters(const Transmission& tx) {
  const TransmissionCounters& now = tx.counters();
  if (now.requests == published_.requests && now.errors == published_.errors &&
      now.bytes_read == published_.bytes_read && now.bytes_written == published_.bytes_written) {
    return;
  }
  TransmissionCounters delta;
  delta.requests = now.requests - published_.requests;
  delta.bytes_read = now.bytes_read - published_.bytes_read;
  delta.bytes_written = now.bytes_written - published_.bytes_written;
  delta.errors = now.errors - published_.errors;
  host_.add_counters(delta);
  published_ = now;
}

}  // namespace multisnap::nbd
