// Connection: one client and the thread that serves it.
//
// The thread runs the handshake (Negotiation) and then the transmission
// phase (Transmission) over a non-blocking Transport (transport.h: the
// socket itself, stdio, or a TLS session over either once the client sent
// NBD_OPT_STARTTLS), sleeping in poll() on its descriptors and on an eventfd. The eventfd is how other threads reach it: the
// Export's completion callbacks (when the thread said it would sleep) and
// request_close().
//
// Transmission loop, per wake-up: recv() as much as fits in a 256 KiB buffer
// (large WRITE payloads go straight into request memory), parse and dispatch
// every complete request, collect completions, and send every ready reply
// with one sendmsg(). The socket is only polled for input while the
// connection is below its in-flight bounds.
//
// Handshake deadline: a connection that has not entered the transmission
// phase `handshake_timeout` after it was created (accepted) ends, whether the
// client is silent, trickles bytes or does not read. Every wait in the
// handshake, the TLS handshake's included, is bounded by what is left of it.
//
// Closing: on NBD_CMD_DISC, end of stream or request_close(), no further
// requests are read; requests in flight complete and their replies are sent
// (for at most drain_timeout once a close was requested), then the socket is
// closed, the Export destroyed, and the host told (connection_finished).
// On a protocol violation the socket is shut down at once and queued replies
// dropped; the thread still waits for requests in flight to complete (the
// Export holds callbacks into it) before it ends.
//
// Thread-safety: request_close() may be called from any thread; start() and
// join() by the owner; the rest runs on the connection thread. The host
// must outlive the Connection.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>

#include "nbd/backend.h"
#include "nbd/negotiation.h"
#include "nbd/socket_util.h"
#include "nbd/tls.h"
#include "nbd/transmission.h"
#include "nbd/transport.h"

namespace multisnap::nbd {

// What a Connection needs from the server that owns it. Called from the
// connection thread.
class ConnectionHost {
 public:
  virtual ~ConnectionHost() = default;
  virtual Backend& backend() = 0;
  // Held shared while a connection negotiates (and so opens an export) and
  // reports the export it chose; the server takes it exclusively to find
  // every connection using an export.
  virtual std::shared_mutex& open_gate() = 0;
  // The handshake is complete. An error means the server will not take the
  // connection into transmission (it was dropped meanwhile, or enough
  // connections are established); its message is the reason, and the
  // connection closes without sending the final reply.
  virtual Status export_selected(uint64_t id, const std::string& canonical_name) = 0;
  virtual void handshake_timed_out() = 0;
  virtual void tls_handshake_failed() = 0;
  // The client sent its first bytes (once per connection).
  virtual void client_spoke(uint64_t id) = 0;
  virtual void add_counters(const TransmissionCounters& delta) = 0;
  virtual void protocol_violation() = 0;
  // Last call of the connection thread: the socket is closed and the Export
  // destroyed.
  virtual void connection_finished(uint64_t id, const std::string& reason) = 0;
};

struct ConnectionOptions {
  TransmissionLimits limits;
  uint32_t max_option_length = Negotiation::kDefaultMaxOptionLength;
  std::chrono::milliseconds drain_timeout{5000};
  std::chrono::milliseconds handshake_timeout{0};  // 0: none
  TlsMode tls = TlsMode::kOff;
  std::shared_ptr<const TlsCredentials> tls_credentials;  // set unless kOff
};

// Why a connection dropped to make room for newer ones ended.
inline constexpr std::string_view kEvictedReason =
    "dropped to make room for newer connections (too many still negotiating)";

class Connection {
 public:
  // kEvicted: still negotiating, and dropped to make room for a newer one.
  enum class CloseRequest : int { kNone = 0, kShutdown = 1, kForced = 2, kEvicted = 3 };

  // `wake` is the connection's own eventfd (WakeFd::create()); the caller
  // makes it, so that it can make room when descriptors run out.
  static std::unique_ptr<Connection> create(uint64_t id, std::unique_ptr<Transport> transport, WakeFd wake,
                                            std::string peer, ConnectionHost& host,
                                            const ConnectionOptions& options);
  ~Connection();  // joins the thread
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Status start();
  void request_close(CloseRequest why);
  void join();

  uint64_t id() const { return id_; }
  const std::string& peer() const { return peer_; }

 private:
  // Bytes received but not yet consumed by the protocol code.
  class InputBuffer {
   public:
    explicit InputBuffer(size_t capacity);
    const uint8_t* data() const { return buf_.get() + begin_; }
    size_t size() const { return end_ - begin_; }
    uint8_t* tail() { return buf_.get() + end_; }
    size_t space() const { return capacity_ - end_; }
    void produced(size_t n) { end_ += n; }
    void consume(size_t n);
    void compact();

   private:
    std::unique_ptr<uint8_t[]> buf_;
    size_t capacity_;
    size_t begin_ = 0;
    size_t end_ = 0;
  };

  // State of the transmission loop's socket.
  struct LoopState {
    bool readable = true;    // recv() may return data without polling first
    bool writable = true;    // sendmsg() may accept data without polling first
    bool peer_gone = false;  // send failed or the stream is unusable: drop replies
    bool hung_up = false;    // poll reported POLLHUP/POLLERR
    std::chrono::steady_clock::time_point drain_deadline{};
    bool draining = false;
  };

  Connection(uint64_t id, std::unique_ptr<Transport> transport, std::string peer, ConnectionHost& host,
             const ConnectionOptions& options, WakeFd wake);

  void run();
  bool negotiate(NegotiatedExport* out);
  void transmit(NegotiatedExport negotiated);

  // Handshake I/O: block until done; false on error, end of stream or close.
  bool send_all(std::string_view data);
  bool receive_more();
  bool wait_socket(short events);
  // STARTTLS was ACKed: the TLS handshake, then the session replaces the
  // transport. False (reason recorded) if it fails or the deadline passes.
  bool start_tls();
  // poll() on the transport (POLLIN on its input, POLLOUT on its output)
  // and the eventfd. Returns poll's result; *got: the transport's events,
  // *woken: the eventfd fired.
  int poll_io(short events, int timeout_ms, short* got, bool* woken);
  // Milliseconds left before the handshake deadline, rounded up; -1 without one.
  int handshake_time_left() const;
  // True (the reason recorded and the host told) once the deadline has passed.
  bool handshake_expired();

  // Transmission loop steps.
  void handle_close_request(Transmission& tx, LoopState& st);
  // Both return whether anything moved (bytes in or out, end of stream).
  bool read_requests(Transmission& tx, LoopState& st);
  bool send_replies(Transmission& tx, LoopState& st);
  void sleep(Transmission& tx, LoopState& st);
  void publish_counters(const Transmission& tx);

  CloseRequest close_request() const {
    return static_cast<CloseRequest>(close_request_.load(std::memory_order_acquire));
  }
  void set_reason(std::string reason);
  // True (and the reason recorded) once request_close() was called.
  bool closing();

  const uint64_t id_;
  std::unique_ptr<Transport> transport_;
  const std::string peer_;
  ConnectionHost& host_;
  const ConnectionOptions options_;
  WakeFd wake_;
  // max() when there is none, and once the handshake is complete.
  std::chrono::steady_clock::time_point handshake_deadline_;
  std::atomic<int> close_request_{0};
  std::thread thread_;

  InputBuffer in_;
  std::string reason_;  // why the connection ended (first reason wins)
  bool spoke_ = false;  // the client has sent something
  TransmissionCounters published_;
};

}  // namespace multisnap::nbd
