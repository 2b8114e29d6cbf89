#include "control/control.h"

#include <charconv>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "control/fields.h"
#include "util/log.h"

namespace multisnap::control {

namespace {

const char* code_token(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kIoError: return "io-error";
    case Code::kNoSpace: return "no-space";
    case Code::kInvalidArgument: return "invalid-argument";
    case Code::kOutOfRange: return "out-of-range";
    case Code::kNotFound: return "not-found";
    case Code::kExists: return "exists";
    case Code::kCorruption: return "corruption";
    case Code::kReadOnly: return "read-only";
    case Code::kBusy: return "busy";
    case Code::kNotSupported: return "not-supported";
    case Code::kFailed: return "store-failed";
    case Code::kShutdown: return "shutting-down";
  }
  return "io-error";
}

Code code_from_token(const std::string& t) {
  for (int c = 0; c <= static_cast<int>(Code::kShutdown); ++c)
    if (t == code_token(static_cast<Code>(c))) return static_cast<Code>(c);
  return Code::kIoError;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Splits what arrives on a socket into lines of at most `max` bytes.
class LineReader {
 public:
  enum class Got {
    kLine,          // *line holds the next line, without its newline
    kTooLong,       // a line longer than max: skipped up to its newline
    kUnterminated,  // end of stream after bytes that end no line
    kClosed,        // end of stream (or an error) between lines
  };
  // `buffer` keeps bytes read past a line for the next call.
  LineReader(int fd, std::string& buffer, size_t max) : fd_(fd), buffer_(buffer), max_(max) {}

  Got next(std::string* line) {
    // buffer_[0, from) is known to hold no newline: each byte is searched
    // once, not once per recv (a 200 MB answer to snapshot-list of 10^6
    // snapshots arrives in 25,000 pieces; searching from the start each
    // time took minutes).
    size_t from = 0;
    for (;;) {
      size_t nl = buffer_.find('\n', from);
      if (skipping_) {
        if (nl != std::string::npos) {
          buffer_.erase(0, nl + 1);
          skipping_ = false;
          from = 0;
          continue;
        }
        buffer_.clear();
      } else if (nl != std::string::npos) {
        bool too_long = nl > max_;
        if (too_long) {
          buffer_.erase(0, nl + 1);
        } else if (nl + 1 == buffer_.size()) {  // the usual case: moved, not copied (answers may be 100s of MB)
          buffer_.pop_back();
          line->swap(buffer_);
          buffer_.clear();
        } else {
          *line = buffer_.substr(0, nl);
          buffer_.erase(0, nl + 1);
        }
        return too_long ? Got::kTooLong : Got::kLine;
      } else if (buffer_.size() > max_) {
        buffer_.clear();
        skipping_ = true;
        return Got::kTooLong;
      }
      from = buffer_.size();
      char tmp[8192];
      ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return buffer_.empty() || skipping_ ? Got::kClosed : Got::kUnterminated;
      buffer_.append(tmp, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string& buffer_;
  size_t max_;
  bool skipping_ = false;  // inside a line that was too long
};

// Counts what a handler streams, so a failure half-way is noticed.
class CountingWriter : public Writer {
 public:
  explicit CountingWriter(Writer& out) : out_(out) {}
  bool write(std::string_view bytes) override {
    written_ += bytes.size();
    return out_.write(bytes);
  }
  ssize_t read_raw(void* buf, size_t len) override { return out_.read_raw(buf, len); }
  size_t written() const { return written_; }

 private:
  Writer& out_;
  size_t written_ = 0;
};

bool write_answer(Writer& out, const Json& answer) {
  return out.write(to_text(answer) + "\n");
}

// The request in `line`, or why it is not one.
Result<Json> parse_request(std::string_view line) {
  if (nesting_depth(line) > kMaxRequestDepth)
    return make_error(Code::kInvalidArgument, "request is nested deeper than {} levels",
                      kMaxRequestDepth);
  // The JSON parser takes a NUL byte for the end of its input, so
  // '{"command":"ping"}\0junk' would pass; JSON text never holds one.
  if (line.find('\0') != std::string_view::npos)
    return make_error(Code::kInvalidArgument, "request is not valid JSON (it holds a NUL byte)");
  Json request = Json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded())
    return make_error(Code::kInvalidArgument, "request is not valid JSON");
  if (!request.is_object())
    return make_error(Code::kInvalidArgument,
                      "a request is one JSON object with a \"command\" string (got {})",
                      request.type_name());
  MS_ASSIGN_OR_RETURN(std::optional<std::string> command, optional_string(request, "command"));
  if (!command)
    return make_error(Code::kInvalidArgument,
                      "a request is one JSON object with a \"command\" string");
  return request;
}

// Bytes already read past a line come first.
ssize_t read_buffered(int fd, std::string& buffered, void* buf, size_t len) {
  if (buffered.empty() && len < (64u << 10)) {
    // Small reads (a stream's record headers) come from one big recv.
    char tmp[256 << 10];
    ssize_t n;
    do n = ::recv(fd, tmp, sizeof tmp, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return n;
    buffered.append(tmp, static_cast<size_t>(n));
  }
  if (!buffered.empty()) {
    size_t n = std::min(len, buffered.size());
    std::memcpy(buf, buffered.data(), n);
    buffered.erase(0, n);
    return static_cast<ssize_t>(n);
  }
  for (;;) {
    ssize_t n = ::recv(fd, buf, len, 0);
    if (n < 0 && errno == EINTR) continue;
    return n;
  }
}

class SocketWriter : public Writer {
 public:
  SocketWriter(int fd, std::string& buffered) : fd_(fd), buffered_(buffered) {}
  bool write(std::string_view bytes) override { return write_all(fd_, bytes); }
  ssize_t read_raw(void* buf, size_t len) override { return read_buffered(fd_, buffered_, buf, len); }

 private:
  int fd_;
  std::string& buffered_;
};

Result<int> make_unix_socket(const std::string& path, sockaddr_un* addr) {
  if (path.size() >= sizeof(addr->sun_path))
    return make_error(Code::kInvalidArgument, "control socket path '{}' is too long", path);
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.c_str(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status(errno, "socket");
  return fd;
}

}  // namespace

Json error_answer(const Status& s) {
  return Json{{"ok", false},
              {"error", {{"code", code_token(s.code())}, {"errno", s.to_errno()}, {"message", s.to_string()}}}};
}

Status answer_status(const Json& answer) {
  if (!answer.is_object() || !answer.contains("ok") || !answer["ok"].is_boolean())
    return make_error(Code::kIoError, "malformed answer from the control socket");
  if (answer["ok"].get<bool>()) return Status::ok();
  // A server's error object, read without trusting its shape (a wrong type
  // must not throw here: nothing above catches it).
  std::string code = "io-error", message = "unknown error";
  if (auto e = answer.find("error"); e != answer.end() && e->is_object()) {
    if (auto c = e->find("code"); c != e->end() && c->is_string()) code = c->get<std::string>();
    if (auto m = e->find("message"); m != e->end() && m->is_string()) message = m->get<std::string>();
  }
  return Status(code_from_token(code), message);
}

// ---------------------------------------------------------------- frames

Status FrameReader::fill(void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    ssize_t got = read_(b, n);
    if (got < 0) return errno_status(errno, "reading a stream from the control connection");
    if (got == 0) return make_error(Code::kShutdown, "the connection closed in the middle of the stream");
    b += got;
    n -= static_cast<size_t>(got);
  }
  return Status::ok();
}

Result<size_t> FrameReader::read(uint8_t* buf, size_t len) {
  size_t done = 0;
  while (done < len && !ended_) {
    if (left_ == 0) {
      uint8_t h[4];
      MS_TRY(fill(h, 4));
      left_ = uint32_t{h[0]} | uint32_t{h[1]} << 8 | uint32_t{h[2]} << 16 | uint32_t{h[3]} << 24;
      if (left_ > kMaxFrame) return make_error(Code::kInvalidArgument, "a stream frame of {} bytes is too long", left_);
      if (left_ == 0) {
        ended_ = true;
        break;
      }
    }
    size_t n = std::min<size_t>(left_, len - done);
    MS_TRY(fill(buf + done, n));
    done += n;
    left_ -= static_cast<uint32_t>(n);
  }
  return done;
}

Status FrameReader::drain() {
  std::vector<uint8_t> sink(1 << 16);
  while (!ended_) MS_TRY(read(sink.data(), sink.size()).status());
  return Status::ok();
}

Status FrameWriter::write(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    size_t take = std::min(n, max_ - buf_.size());
    buf_.append(c, take);
    c += take;
    n -= take;
    if (buf_.size() == max_) MS_TRY(flush());
  }
  return Status::ok();
}

Status FrameWriter::flush() {
  if (buf_.empty()) return Status::ok();
  uint32_t len = static_cast<uint32_t>(buf_.size());
  uint8_t h[4] = {uint8_t(len), uint8_t(len >> 8), uint8_t(len >> 16), uint8_t(len >> 24)};
  if (!write_(h, 4) || !write_(buf_.data(), buf_.size()))
    return make_error(Code::kIoError, "the other end of the control connection went away");
  buf_.clear();
  return Status::ok();
}

Status FrameWriter::end() {
  MS_TRY(flush());
  uint8_t h[4] = {0, 0, 0, 0};
  if (!write_(h, 4)) return make_error(Code::kIoError, "the other end of the control connection went away");
  return Status::ok();
}

std::string to_text(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

void append_json_number(std::string& out, uint64_t n) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, r.ptr);
}

void append_json_string(std::string& out, std::string_view s) {
  // Printable ASCII other than '"' and '\\' is copied as it is; anything
  // else (escapes, other UTF-8, bytes that are not UTF-8) goes through
  // nlohmann's escaper, so that the two cannot differ. Snapshot names,
  // times and uuids are printable ASCII.
  bool plain = std::all_of(s.begin(), s.end(),
                           [](char c) { return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'; });
  if (!plain) {
    out += to_text(Json(std::string(s)));
    return;
  }
  out += '"';
  out += s;
  out += '"';
}

size_t nesting_depth(std::string_view text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

bool serve_line(std::string_view line, const Handler& handler, Writer& out) {
  Result<Json> request = parse_request(line);
  if (!request.is_ok()) return write_answer(out, error_answer(request.status()));
  CountingWriter counted(out);
  std::optional<Json> answer;
  bool threw = false;
  // The last line of defence: handlers read fields through fields.h and
  // should never throw, but a bug there must cost one request, not the
  // daemon and every NBD client with it.
  try {
    answer = handler(*request, counted);
  } catch (const Json::exception& e) {
    threw = true;
    MS_LOG_WARN("control request failed in the JSON library: {}", e.what());
    answer = error_answer(make_error(Code::kInvalidArgument,
                                     "the request has a field of the wrong type or value ({})",
                                     e.what()));
  } catch (const std::exception& e) {
    threw = true;
    MS_LOG_ERROR("control request failed: {}", e.what());
    answer = error_answer(
        make_error(Code::kIoError, "internal error handling the request: {}", e.what()));
  }
  if (threw && counted.written() > 0) {
    // Part of a streamed answer is on the wire: a second object would
    // break the one-answer-per-line framing, so the connection ends.
    return false;
  }
  // A handler that streamed its answer returns none; a stream command
  // (send, receive) returns its final answer after the stream.
  if (!answer && counted.written() > 0) return true;
  if (!answer)
    answer = error_answer(make_error(Code::kIoError, "internal error: the request got no answer"));
  return write_answer(out, *answer);
}

// ---------------------------------------------------------------- server

class ControlServer::Impl {
 public:
  Impl(std::string path, Handler handler) : path_(std::move(path)), handler_(std::move(handler)) {}
  ~Impl() { stop(); }

  Status listen(uint32_t mode) {
    sockaddr_un addr;
    MS_ASSIGN_OR_RETURN(listen_fd_, make_unix_socket(path_, &addr));
    struct stat st;
    if (::lstat(path_.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode))
        return make_error(Code::kExists, "{} exists and is not a socket", path_);
      // A socket file: live if something answers there.
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      bool live = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      if (probe >= 0) ::close(probe);
      if (live) return make_error(Code::kBusy, "another multisnap is already listening on {}", path_);
      ::unlink(path_.c_str());
    }
    // The mode set on the socket before bind() is the file's from the start
    // (no process-wide umask change while other threads run).
    ::fchmod(listen_fd_, mode);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      return errno_status(errno, "cannot listen on " + path_);
    bound_ = true;
    ::chmod(path_.c_str(), mode);
    if (::listen(listen_fd_, 64) != 0) return errno_status(errno, "listen on " + path_);
    accept_thread_ = std::thread([this] { accept_loop(); });
    return Status::ok();
  }

  // A socket that is already listening (systemd socket activation).
  Status adopt(int fd) {
    listen_fd_ = fd;
    int accepting = 0;
    socklen_t len = sizeof accepting;
    sockaddr_un addr{};
    socklen_t alen = sizeof addr;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 || !accepting ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0 || addr.sun_family != AF_UNIX) {
      return make_error(Code::kInvalidArgument, "inherited descriptor {} is not a listening unix socket", fd);
    }
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    path_ = addr.sun_path[0] != '\0' ? std::string(addr.sun_path, ::strnlen(addr.sun_path, sizeof addr.sun_path))
                                     : "(abstract)";
    adopted_ = true;
    accept_thread_ = std::thread([this] { accept_loop(); });
    return Status::ok();
  }

  void stop() {
    if (stopped_.exchange(true)) return;
    // Not an inherited socket: systemd listens on it again after we exit
    // (the accept loop notices stopped_ within its poll interval).
    if (listen_fd_ >= 0 && !adopted_) ::shutdown(listen_fd_, SHUT_RDWR);
    if (accept_thread_.joinable()) accept_thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (bound_) ::unlink(path_.c_str());  // only a file this server made
    std::list<Conn> conns;
    {
      std::lock_guard lock(mu_);
      for (auto& c : conns_) ::shutdown(c.fd, SHUT_RDWR);
      conns.splice(conns.end(), conns_);
    }
    for (auto& c : conns) {
      if (c.thread.joinable()) c.thread.join();
      ::close(c.fd);
    }
  }

  const std::string& path() const { return path_; }

 private:
  struct Conn {
    int fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void accept_loop() {
    while (!stopped_) {
      pollfd p{listen_fd_, POLLIN, 0};
      int r = ::poll(&p, 1, 200);
      if (r <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::lock_guard lock(mu_);
      reap_locked();
      conns_.emplace_back();
      Conn& c = conns_.back();
      c.fd = fd;
      try {
        c.thread = std::thread([this, &c] {
          serve(c.fd);
          c.done = true;
        });
      } catch (const std::system_error& e) {  // out of threads: refuse this one
        MS_LOG_WARN("control connection refused: {}", e.what());
        ::close(fd);
        conns_.pop_back();
      }
    }
  }

  void reap_locked() {
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->done) {
        it->thread.join();
        ::close(it->fd);
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void serve(int fd) {
    std::string buffer;
    LineReader reader(fd, buffer, kMaxRequestBytes);
    SocketWriter out(fd, buffer);
    std::string line;
    while (!stopped_) {
      LineReader::Got got = reader.next(&line);
      if (got == LineReader::Got::kClosed) break;
      if (got == LineReader::Got::kLine) {
        if (!serve_line(line, handler_, out)) break;
        continue;
      }
      bool unterminated = got == LineReader::Got::kUnterminated;
      Status s = unterminated
                     ? make_error(Code::kInvalidArgument, "request does not end with a newline")
                     : make_error(Code::kInvalidArgument, "request is longer than {} bytes",
                                  kMaxRequestBytes);
      if (!write_answer(out, error_answer(s)) || unterminated) break;
    }
    // The client sees the end now; the descriptor is closed when reaped.
    ::shutdown(fd, SHUT_RDWR);
  }

  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  bool bound_ = false;
  bool adopted_ = false;
  std::atomic<bool> stopped_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<Conn> conns_;
};

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlServer::~ControlServer() = default;

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& path, Handler handler,
                                                            uint32_t mode) {
  auto impl = std::make_unique<Impl>(path, std::move(handler));
  MS_TRY(impl->listen(mode));
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

Result<std::unique_ptr<ControlServer>> ControlServer::adopt(int fd, Handler handler) {
  auto impl = std::make_unique<Impl>("", std::move(handler));
  MS_TRY(impl->adopt(fd));
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

void ControlServer::stop() { impl_->stop(); }
const std::string& ControlServer::path() const { return impl_->path(); }

// ---------------------------------------------------------------- client

Result<std::unique_ptr<ControlClient>> ControlClient::connect(const std::string& path) {
  sockaddr_un addr;
  MS_ASSIGN_OR_RETURN(int fd, make_unix_socket(path, &addr));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd);
    if (err == ENOENT || err == ECONNREFUSED)
      return make_error(Code::kNotFound,
                        "no multisnap is serving on control socket {} (start `multisnap serve`, or pass --control "
                        "or MULTISNAP_CONTROL)",
                        path);
    return errno_status(err, "cannot connect to " + path);
  }
  return std::unique_ptr<ControlClient>(new ControlClient(fd));
}

ControlClient::~ControlClient() { ::close(fd_); }

Result<Json> ControlClient::call(const Json& request) {
  MS_TRY(send(request));
  return read_answer();
}

Status ControlClient::send(const Json& request) {
  if (!write_all(fd_, to_text(request) + "\n")) return errno_status(errno, "sending to the control socket");
  return Status::ok();
}

bool ControlClient::write_raw(const void* p, size_t n) {
  return write_all(fd_, std::string_view(static_cast<const char*>(p), n));
}

ssize_t ControlClient::read_raw(void* p, size_t n) { return read_buffered(fd_, buffer_, p, n); }

Result<Json> ControlClient::read_answer() { return read_answer(nullptr); }

Result<Json> ControlClient::read_answer(const Json::parser_callback_t& callback) {
  std::string line;
  if (LineReader(fd_, buffer_, SIZE_MAX).next(&line) != LineReader::Got::kLine)
    return make_error(Code::kIoError, "the server closed the control connection without answering");
  Json answer = Json::parse(line, callback, false);
  if (answer.is_discarded()) return make_error(Code::kIoError, "malformed answer from the control socket");
  return answer;
}

namespace {
// The bytes of one line from a socket, as an input iterator for nlohmann's
// parser: they end at the newline (not included) or at the end of the
// connection. Bytes read past the newline go back to `buffer`.
class LineSource {
 public:
  LineSource(int fd, std::string& buffer) : fd_(fd), buffer_(buffer) {
    chunk_.swap(buffer_);  // bytes already read past the last answer come first
  }
  ~LineSource() {
    if (newline_) buffer_.assign(chunk_, pos_ + 1);
  }
  bool at_end() {
    if (pos_ == chunk_.size() && !eof_) refill();
    if (pos_ == chunk_.size()) return true;
    if (chunk_[pos_] == '\n') newline_ = true;
    return newline_;
  }
  char get() const { return chunk_[pos_]; }
  void next() { ++pos_; }
  bool newline() const { return newline_; }
  bool eof() const { return eof_; }
  bool any() const { return any_ || !chunk_.empty(); }

 private:
  void refill() {
    any_ = any_ || !chunk_.empty();
    chunk_.resize(256 << 10);
    pos_ = 0;
    for (;;) {
      ssize_t n = ::recv(fd_, chunk_.data(), chunk_.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      chunk_.resize(n > 0 ? static_cast<size_t>(n) : 0);
      if (n <= 0) eof_ = true;
      return;
    }
  }

  int fd_;
  std::string& buffer_;
  std::string chunk_;
  size_t pos_ = 0;
  bool eof_ = false, newline_ = false, any_ = false;
};

struct LineIterator {
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = char;
  LineSource* source = nullptr;  // null: the end

  char operator*() const { return source->get(); }
  LineIterator& operator++() {
    source->next();
    return *this;
  }
  bool operator==(const LineIterator& o) const { return ended() == o.ended(); }
  bool operator!=(const LineIterator& o) const { return !(*this == o); }
  bool ended() const { return source == nullptr || source->at_end(); }
};
}  // namespace

Status ControlClient::read_answer(nlohmann::json_sax<Json>& sax) {
  bool parsed, terminated, closed, any;
  {
    LineSource source(fd_, buffer_);
    parsed = Json::sax_parse(LineIterator{&source}, LineIterator{}, &sax);
    terminated = source.newline();
    closed = source.eof();
    any = source.any();
  }
  if (parsed && terminated) return Status::ok();
  if (!any) return make_error(Code::kIoError, "the server closed the control connection without answering");
  if (closed && !terminated)
    return make_error(Code::kIoError, "the server closed the control connection in the middle of its answer");
  return make_error(Code::kIoError, "malformed answer from the control socket");
}

}  // namespace multisnap::control
