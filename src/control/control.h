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

#include <sys/types.h>

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
// Appends `s` as a JSON string, byte for byte as to_text(Json(s)) writes it
// (escapes, U+FFFD for bytes that are not UTF-8), without building a Json:
// for answers formatted by hand (snapshot-list's million objects).
void append_json_string(std::string& out, std::string_view s);
// Appends `n` in decimal, as to_text writes an unsigned number.
void append_json_number(std::string& out, uint64_t n);
// The deepest nesting of arrays and objects in `text` (brackets inside JSON
// strings do not count); cheap, and safe on any bytes.
size_t nesting_depth(std::string_view text);

// Lets a handler send a long answer in pieces (one line in all), and, for
// the stream commands, read the raw bytes that follow the request line.
class Writer {
 public:
  virtual ~Writer() = default;
  virtual bool write(std::string_view bytes) = 0;
  // Up to len bytes from the connection (buffered ones first): > 0 bytes
  // read, 0 at the end of the connection, < 0 on an error.
  virtual ssize_t read_raw(void* buf, size_t len) {
    (void)buf;
    (void)len;
    return -1;
  }
};

// Streams on a control connection (docs/control.md, "Streams"): after the
// request line (and, from the server, after its first answer line) the
// bytes go as frames, a u32 little-endian length then that many bytes; a
// frame of length 0 ends the stream. A final answer line follows.
constexpr uint32_t kMaxFrame = 4u << 20;
// Reads the bytes of a framed stream; 0 after the end frame. A connection
// that ends before the end frame is Code::kShutdown.
class FrameReader {
 public:
  using ReadFn = std::function<ssize_t(void*, size_t)>;
  explicit FrameReader(ReadFn read) : read_(std::move(read)) {}
  Result<size_t> read(uint8_t* buf, size_t len);  // fills buf unless the stream ends
  bool ended() const { return ended_; }
  // Reads and discards the rest of the stream (to answer after an error).
  Status drain();

 private:
  Status fill(void* p, size_t n);
  ReadFn read_;
  uint32_t left_ = 0;  // bytes left in the current frame
  bool ended_ = false;
};
// Frames bytes for a stream; flush() sends what is buffered, end() the end frame.
class FrameWriter {
 public:
  using WriteFn = std::function<bool(const void*, size_t)>;
  explicit FrameWriter(WriteFn write, size_t frame_bytes = 1 << 20) : write_(std::move(write)), max_(frame_bytes) {}
  Status write(const void* p, size_t n);
  Status flush();
  Status end();

 private:
  WriteFn write_;
  size_t max_;
  std::string buf_;
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
  // Serves on a socket that is already listening (systemd socket
  // activation), taking it; stop() closes it and leaves its file alone.
  static Result<std::unique_ptr<ControlServer>> adopt(int fd, Handler handler);
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
  // The pieces of call(), for the stream commands.
  Status send(const Json& request);
  Result<Json> read_answer();
  // The same with nlohmann's parser callback, which may handle and drop the
  // elements of a long answer as they are parsed (snapshot-list).
  Result<Json> read_answer(const Json::parser_callback_t& callback);
  // Hands the answer line to `sax` as its bytes arrive, never holding the
  // whole line (snapshot-list: control/snapshot_list.h). Ok when the line
  // parsed to its end; io-error when it is not JSON, the handler stopped
  // the parse (returned false), or the connection ended first. After an
  // error the connection is not usable.
  Status read_answer(nlohmann::json_sax<Json>& sax);
  bool write_raw(const void* p, size_t n);
  ssize_t read_raw(void* p, size_t n);

 private:
  explicit ControlClient(int fd) : fd_(fd) {}
  int fd_;
  std::string buffer_;
};

}  // namespace multisnap::control
