// Server: the multisnap NBD server. It serves the exports of a Backend on
// unix and TCP sockets, to many clients at once, each on any export.
//
//   auto server = Server::start(backend, {.listen = {"unix:/run/ms.sock", "tcp::10809"}});
//   if (!server.is_ok()) ...;                  // bad address, port in use, ...
//   (*server)->addresses();                    // {"unix:/run/ms.sock", "tcp:127.0.0.1:10809"}
//   (*server)->count_connections(is_snapshot_5);
//   (*server)->disconnect(is_snapshot_5);      // `snapshot delete --force`
//   (*server)->stop();                         // or destroy it
//
// What it speaks (docs/nbd.md has the details): the fixed newstyle
// handshake; options EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
// LIST_META_CONTEXT, SET_META_CONTEXT (base:allocation), STARTTLS (TLS with
// X.509 certificates or a PSK, offered or required: ServerOptions::tls);
// commands READ,
// WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS and DISC with the
// FUA, NO_HOLE, FAST_ZERO, DF and REQ_ONE flags; simple or structured
// replies. Export names go to the Backend unchanged ("" is the default
// export; the Backend maps it). The canonical name of an open export is its
// Export::info().name; that is the name predicates below see.
//
// Threads: one accept thread, plus one thread per connection. A connection
// parses requests as they arrive and hands each to its Export at once;
// replies go out as completions arrive, in any order, batched into one
// sendmsg. Each connection has at most `max_requests_per_connection`
// requests and `max_bytes_per_connection` payload bytes in flight (a single
// request may exceed the latter when it is alone), and stops reading its
// socket at those bounds. Connections still in the handshake are limited
// apart from established ones (`max_negotiating`, `handshake_timeout`), so
// clients that connect and send nothing cannot lock real clients out.
//
// Ownership: the Server borrows the Backend, which must stay valid until
// stop() has returned; connection threads call it concurrently. Each
// connection owns the Export it opened and destroys it, on its own thread,
// before it is counted as gone.
//
// Thread-safety: every method may be called from any thread, concurrently,
// except from inside an on_connection callback, a predicate passed to this
// class, or a Backend/Export callback (those run on server threads, and
// stop()/disconnect() wait for them: deadlock).
//
// Errors: start() returns kInvalidArgument for a bad address or option,
// kBusy when a live server owns a unix socket path, kExists when the path is
// another kind of file, and errno-based codes for socket errors. Nothing
// else fails.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "nbd/address.h"
#include "nbd/backend.h"
#include "nbd/negotiation.h"
#include "nbd/tls.h"
#include "util/status.h"

namespace multisnap::nbd {

// Reported to ServerOptions::on_connection, from server threads.
struct ConnectionEvent {
  enum class Kind { kOpened, kClosed };
  Kind kind = Kind::kOpened;
  uint64_t id = 0;          // unique within the server, from 1
  std::string peer;         // "unix" or "127.0.0.1:53422"
  std::string export_name;  // kClosed: canonical name, or "" if none was chosen
  std::string reason;       // kClosed: why it ended, for a human
};

struct ServerOptions {
  // "unix:PATH" or "tcp:HOST:PORT" (address.h). At least one address or
  // listen_fds, unless stream_only.
  std::vector<std::string> listen;
  // Sockets already listening (systemd socket activation). The server takes
  // them over: it closes them at stop(), and leaves their socket files to
  // whoever made them.
  std::vector<int> listen_fds;
  // No listeners at all: the only clients are those given to
  // serve_stream() (`serve --nbd stdio`).
  bool stream_only = false;
  uint32_t unix_socket_mode = 0600;
  // TLS through NBD_OPT_STARTTLS (docs/nbd.md#tls). kOn and kRequire need
  // tls_credentials; kRequire refuses every option but STARTTLS and ABORT
  // until TLS is up.
  TlsMode tls = TlsMode::kOff;
  TlsOptions tls_credentials;
  // Connections in the transmission phase. While this many are established,
  // further clients are accepted and closed at once (and a warning logged);
  // a client whose handshake completes while the limit is reached is closed
  // instead of entering transmission. Connections still negotiating do not
  // count here: idle half-open sockets cannot take real clients' slots.
  uint32_t max_connections = 1024;
  // Connections accepted and not yet in the transmission phase. When a new
  // connection arrives and this many are negotiating, the oldest of them
  // that has not sent a byte is dropped to make room (the oldest of all if
  // every one has spoken): a real client finishes its handshake in a few
  // round trips, so a flood of idle sockets only pushes itself out. This
  // also bounds the threads and sockets such a flood holds. The same happens
  // when accept(), the connection's eventfd or its thread cannot be had for
  // lack of descriptors or threads. Lowered at start() to an eighth of the
  // open file limit (two descriptors each), so that handshakes never hold
  // more than a quarter of the descriptors.
  uint32_t max_negotiating = 128;
  // A connection that has not entered the transmission phase this long after
  // it was accepted is dropped (counted in ServerStats::handshake_timeouts).
  // The deadline covers the whole handshake, however the client paces it.
  // Zero: no deadline.
  std::chrono::milliseconds handshake_timeout{10000};
  uint32_t max_requests_per_connection = 64;
  size_t max_bytes_per_connection = 64u << 20;
  // Option payloads up to this (8 KiB..1 MiB) are processed; longer ones are
  // refused (NBD_REP_ERR_TOO_BIG) up to 1 MiB, and beyond that the client is
  // dropped.
  uint32_t max_option_length = 64u << 10;
  // How long a closing connection (stop(), disconnect()) waits for its client
  // to take the replies of requests that were in flight. Those requests
  // themselves always complete first, however long that takes.
  std::chrono::milliseconds drain_timeout{5000};
  // Optional; called on server threads; must be thread-safe and quick.
  std::function<void(const ConnectionEvent&)> on_connection;
};

// Monotonic totals since start(), except connections_now and
// connections_negotiating.
struct ServerStats {
  uint64_t connections_now = 0;          // accepted and not yet gone
  uint64_t connections_negotiating = 0;  // of those, still in the handshake (and not dropped)
  uint64_t connections_total = 0;        // accepted (including refused ones over the limit)
  uint64_t connections_refused = 0;      // closed because max_connections were established
  uint64_t handshake_timeouts = 0;       // dropped for missing the handshake deadline
  uint64_t handshakes_evicted = 0;       // dropped to make room for newer negotiating ones
  uint64_t requests = 0;                 // transmission requests received (not DISC)
  uint64_t bytes_read = 0;               // READ payload bytes sent to clients
  uint64_t bytes_written = 0;            // WRITE payload bytes accepted from clients
  uint64_t errors = 0;                   // requests answered with an error
  uint64_t protocol_violations = 0;      // connections dropped for breaking the protocol
  uint64_t tls_handshake_failures = 0;   // connections whose TLS handshake failed (wrong key, ...)
};

struct ConnectionInfo {
  uint64_t id = 0;
  std::string peer;
  bool has_export = false;  // false while negotiating
  std::string export_name;  // canonical name when has_export
};

// Decides, from a canonical export name, whether a connection is concerned.
using ExportMatcher = std::function<bool(std::string_view export_name)>;

class Server {
 public:
  // Opens every listening socket (all or none) and starts accepting.
  static Result<std::unique_ptr<Server>> start(Backend& backend, ServerOptions options);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Closes the listeners (removing unix socket files), stops every
  // connection from reading new requests, lets requests in flight finish and
  // their replies go out (see drain_timeout), closes the connections and
  // joins all threads. Idempotent; concurrent callers all return once done.
  void stop();

  // Serves one client already connected on `in` and `out` (the same
  // socket, or two pipes: standard input and output), taking both. It is
  // a connection like any other, with the peer name "stdio"; returns its id
  // (ConnectionEvent::id) for on_connection to recognise its end.
  Result<uint64_t> serve_stream(int in, int out);

  // Where the server listens, with real TCP ports: "unix:/p", "tcp:127.0.0.1:41234".
  std::vector<std::string> addresses() const;
  std::vector<ListenAddress> listen_addresses() const;

  // Connections in the transmission phase whose export matches.
  size_t count_connections(const ExportMatcher& match) const;

  // Closes every connection whose export matches, as stop() does, and
  // returns once all of them are gone: sockets closed, Export objects
  // destroyed. Returns how many there were. Every connection that had opened
  // a matching export when this was called is included; a client may open a
  // matching export again right after, so make the Backend refuse the name
  // first (e.g. delete the snapshot, then disconnect its clients).
  size_t disconnect(const ExportMatcher& match);

  std::vector<ConnectionInfo> connections() const;
  ServerStats stats() const;

 private:
  class Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace multisnap::nbd
