// The control socket: how `multisnap snapshot ...` and `multisnap status`
// talk to a running `multisnap serve`. A Unix stream socket (mode 0600);
// each request is one JSON object on one line, and so is each answer.
// docs/control.md is the protocol reference.
//
//   ControlServer: accepts connections on its own thread and calls the
//   handler for each request, one connection at a time per thread (one
//   thread per connection). The handler returns the answer object; it may
//   instead stream a large answer through the Writer it is given.
//   ControlClient: connect, call, close.
//
// Thread-safety: ControlServer's methods may be called from any thread; the
// handler runs on connection threads and must be thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "util/status.h"

namespace multisnap::control {

using Json = nlohmann::json;

// Longest request line accepted (without its newline). A longer line gets an
// invalid-argument answer and is skipped; the connection stays usable.
constexpr size_t kMaxRequestBytes = 64 * 1024;
// Deepest nesting of arrays and objects a request may have. Requests are
// flat; the limit is checked before parsing, so that 64 KiB of "[" cannot
// recurse deep in the JSON library (copy, compare and dump are recursive).
constexpr size_t kMaxRequestDepth = 32;

// {"ok": false, "error": {"code": "busy", "errno": 16, "message": "..."}}
Json error_answer(const Status& status);
// The Status an answer carries (ok for {"ok": true, ...}).
Status answer_status(const Json& answer);
// `value` as compact JSON text. Never throws: bytes that are not UTF-8 in a
// string become U+FFFD.
std::string to_text(const Json& value);
// The deepest nesting of arrays and objects in `text` (brackets inside JSON
// strings do not count); cheap, and safe on any bytes.
size_t nesting_depth(std::string_view text);

// Lets a handler send a long answer in pieces (one line in all).
class Writer {
 public:
  virtual ~Writer() = default;
  virtual bool write(std::string_view bytes) = 0;
};

// Returns the answer, or nullopt when it already wrote it through the Writer.
// `request` is an object with a "command" string. The handler should not
// throw; if it does, the request gets an error answer (invalid-argument for
// a JSON library error, io-error otherwise) and the server keeps serving.
using Handler = std::function<std::optional<Json>(const Json& request, Writer& out)>;

// What the server does with one request line (without its newline): checks
// it (depth, JSON, an object, a "command" string), calls the handler and
// writes exactly one answer line to `out`. Returns false when the
// connection must be closed: a write failed, or the handler threw after
// streaming part of its answer. Never throws (short of bad_alloc). Used by
// ControlServer, its tests and the control fuzz target.
bool serve_line(std::string_view line, const Handler& handler, Writer& out);

class ControlServer {
 public:
  // Listens on `path` (a stale socket file is replaced; a live one is kBusy).
  static Result<std::unique_ptr<ControlServer>> start(const std::string& path, Handler handler,
                                                      uint32_t mode = 0600);
  ~ControlServer();
  void stop();  // closes the listener and every connection, joins threads, removes the file
  const std::string& path() const;

 private:
  class Impl;
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class ControlClient {
 public:
  static Result<std::unique_ptr<ControlClient>> connect(const std::string& path);
  ~ControlClient();
  // Sends the request and returns the answer (which may say ok: false).
  Result<Json> call(const Json& request);

 private:
  explicit ControlClient(int fd) : fd_(fd) {}
  int fd_;
  std::string buffer_;
};

}  // namespace multisnap::control
