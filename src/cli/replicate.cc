// multisnap send / receive: pipes between a file (or stdin/stdout) and the
// stream commands of a running serve's control socket (docs/control.md,
// "Streams"). The daemon does the work; these move bytes and show progress.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "control/control.h"
#include "stream/reader.h"
#include "util/units.h"

namespace multisnap::cli {

using control::Json;

namespace {

// A progress line on stderr, as nbdcopy --progress draws it: rewritten in
// place at most 4 times a second, finished with a newline.
class Progress {
 public:
  Progress(bool on, const char* verb) : on_(on), verb_(verb), start_(std::chrono::steady_clock::now()) {}
  void set_total(uint64_t total) { total_ = total; }
  void update(uint64_t done, bool final = false) {
    if (!on_) return;
    auto now = std::chrono::steady_clock::now();
    if (!final && now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    if (total_)
      fprintf(stderr, "\r%s %s / %s (%.0f%%), %s/s   ", verb_, format_size(done).c_str(), format_size(total_).c_str(),
              100.0 * static_cast<double>(std::min(done, total_)) / static_cast<double>(total_),
              format_size(static_cast<uint64_t>(rate)).c_str());
    else
      fprintf(stderr, "\r%s %s, %s/s   ", verb_, format_size(done).c_str(), format_size(static_cast<uint64_t>(rate)).c_str());
    if (final) fprintf(stderr, "\n");
  }

 private:
  bool on_;
  const char* verb_;
  uint64_t total_ = 0;
  std::chrono::steady_clock::time_point start_, last_{};
};

bool write_fd(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Moves bytes from `produce` to `consume` through a queue of up to `depth`
// blocks, the producer on its own thread, so that reading one side and
// writing the other overlap (the control socket's buffer is small). A
// failing consumer detaches the producer, which may be blocked on its input;
// the process ends soon after.
Status pump(const std::function<Result<size_t>(uint8_t*, size_t)>& produce,
            const std::function<Status(const uint8_t*, size_t)>& consume, size_t block = 1 << 20, size_t depth = 8) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::vector<uint8_t>> full;
    bool ended = false, stop = false;
    Status error;
  };
  auto sh = std::make_shared<Shared>();
  std::thread producer([sh, produce, block, depth] {
    for (;;) {
      std::vector<uint8_t> b(block);
      auto n = produce(b.data(), b.size());
      std::unique_lock lock(sh->mu);
      if (!n.is_ok() || *n == 0) {
        if (!n.is_ok()) sh->error = n.status();
        sh->ended = true;
        sh->cv.notify_all();
        return;
      }
      b.resize(*n);
      sh->cv.wait(lock, [&] { return sh->full.size() < depth || sh->stop; });
      if (sh->stop) return;
      sh->full.push_back(std::move(b));
      sh->cv.notify_all();
    }
  });
  for (;;) {
    std::vector<uint8_t> b;
    {
      std::unique_lock lock(sh->mu);
      sh->cv.wait(lock, [&] { return !sh->full.empty() || sh->ended; });
      if (sh->full.empty()) break;
      b = std::move(sh->full.front());
      sh->full.pop_front();
      sh->cv.notify_all();
    }
    if (Status s = consume(b.data(), b.size()); !s.is_ok()) {
      {
        std::lock_guard lock(sh->mu);
        sh->stop = true;
        sh->cv.notify_all();
      }
      producer.detach();
      return s;
    }
  }
  producer.join();
  return sh->error;
}

Json snapshot_ref(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() <= 10)
    return Json(std::stoull(s));
  return Json(s);
}

}  // namespace

int run_send(const OnlineArgs& o, const SendArgs& a) {
  signal(SIGPIPE, SIG_IGN);  // a reader that goes away is an error we explain
  int fd = STDOUT_FILENO;
  if (!a.output.empty()) {
    fd = ::open(a.output.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fail(errno_status(errno, "cannot open " + a.output));
  } else if (isatty(STDOUT_FILENO)) {
    return fail(make_error(Code::kInvalidArgument,
                           "refusing to write a binary stream to a terminal; redirect it or use --output FILE"));
  } else {
    set_json_errors(false);  // standard output carries the stream: errors go to standard error only
  }
  auto cleanup = [&](int rc) {
    if (!a.output.empty()) {
      ::close(fd);
      if (rc != 0) ::unlink(a.output.c_str());  // never leave a partial stream behind
    }
    return rc;
  };
  auto client = control::ControlClient::connect(control_path(o.control));
  if (!client.is_ok()) return cleanup(fail(client.status()));
  Json req{{"command", "send"}, {"snapshot", snapshot_ref(a.snapshot)}, {"compress", a.compress}};
  if (!a.from.empty()) req["from"] = snapshot_ref(a.from);
  if (Status s = (*client)->send(req); !s.is_ok()) return cleanup(fail(s));
  auto first = (*client)->read_answer();
  if (!first.is_ok()) return cleanup(fail(first.status()));
  if (Status s = control::answer_status(*first); !s.is_ok()) return cleanup(fail(s));
  Progress progress(a.progress, "sent");
  progress.set_total((*first)["stream"].value("total_bytes", uint64_t{0}));
  stream::CoverageScanner coverage;  // progress in volume bytes, not stream bytes
  control::FrameReader frames([&](void* p, size_t n) { return (*client)->read_raw(p, n); });
  uint64_t done = 0;
  Status pumped = pump([&](uint8_t* p, size_t n) { return frames.read(p, n); },
                       [&](const uint8_t* p, size_t n) -> Status {
                         if (!write_fd(fd, p, n)) {
                           if (errno == EPIPE)
                             return make_error(Code::kIoError,
                                               "the reader of the stream went away after {} bytes (did the "
                                               "receiving side refuse it? see its error)",
                                               done);
                           return errno_status(errno, "writing the stream");
                         }
                         done += n;
                         coverage.feed(p, n);
                         progress.update(coverage.covered());
                         return Status::ok();
                       });
  if (!pumped.is_ok()) return cleanup(fail(pumped.annotate("send")));
  auto last = (*client)->read_answer();
  if (!last.is_ok()) return cleanup(fail(last.status()));
  if (Status s = control::answer_status(*last); !s.is_ok()) return cleanup(fail(s));
  progress.update(coverage.covered(), true);
  if (fd != STDOUT_FILENO && ::fsync(fd) != 0) return cleanup(fail(errno_status(errno, "fsync " + a.output)));
  return cleanup(0);
}

int run_receive(const OnlineArgs& o, const ReceiveArgs& a) {
  if (a.abort) {
    auto client = control::ControlClient::connect(control_path(o.control));
    if (!client.is_ok()) return fail(client.status());
    auto r = (*client)->call({{"command", "receive-abort"}});
    if (!r.is_ok()) return fail(r.status());
    if (Status s = control::answer_status(*r); !s.is_ok()) return fail(s);
    if (o.json) printf("%s\n", r->dump(2).c_str());
    else if ((*r)["aborted"].get<bool>())
      printf("aborted the pending receive of snapshot %s\n", (*r)["uuid"].get<std::string>().c_str());
    else
      printf("no receive is pending; nothing to abort\n");
    return 0;
  }
  int fd = STDIN_FILENO;
  uint64_t total = 0;
  if (!a.input.empty()) {
    fd = ::open(a.input.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(errno_status(errno, "cannot open " + a.input));
  }
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) total = static_cast<uint64_t>(st.st_size);
  auto client = control::ControlClient::connect(control_path(o.control));
  if (!client.is_ok()) return fail(client.status());
  Json req{{"command", "receive"}};
  if (!a.name.empty()) req["name"] = a.name;
  if (Status s = (*client)->send(req); !s.is_ok()) return fail(s);
  auto first = (*client)->read_answer();
  if (!first.is_ok()) return fail(first.status());
  if (Status s = control::answer_status(*first); !s.is_ok()) return fail(s);
  Progress progress(a.progress, "received");
  progress.set_total(total);
  control::FrameWriter frames([&](const void* p, size_t n) { return (*client)->write_raw(p, n); });
  uint64_t done = 0;
  Status pumped = pump(
      [&](uint8_t* p, size_t n) -> Result<size_t> {
        for (;;) {
          ssize_t got = ::read(fd, p, n);
          if (got < 0 && errno == EINTR) continue;
          if (got < 0) return errno_status(errno, "reading the stream");
          return static_cast<size_t>(got);
        }
      },
      [&](const uint8_t* p, size_t n) -> Status {
        MS_TRY(frames.write(p, n));
        done += n;
        progress.update(done);
        return Status::ok();
      });
  if (!pumped.is_ok()) {
    // serve may have stopped reading and said why.
    auto why = (*client)->read_answer();
    if (why.is_ok() && !control::answer_status(*why).is_ok()) return fail(control::answer_status(*why));
    return fail(pumped);
  }
  if (Status s = frames.end(); !s.is_ok()) return fail(s);
  progress.update(done, true);
  auto last = (*client)->read_answer();
  if (!last.is_ok()) return fail(last.status());
  if (Status s = control::answer_status(*last); !s.is_ok()) return fail(s);
  if (o.json) printf("%s\n", (*last)["snapshot"].dump(2).c_str());
  else printf("%llu\n", static_cast<unsigned long long>((*last)["snapshot"]["id"].get<uint64_t>()));
  return 0;
}

int run_rollback(const OnlineArgs& o, const std::string& snapshot, bool force, bool progress) {
  auto client = control::ControlClient::connect(control_path(o.control));
  if (!client.is_ok()) return fail(client.status());
  // --progress: another connection polls status while this one waits.
  std::atomic<bool> done{false};
  std::thread watcher;
  if (progress) {
    watcher = std::thread([&] {
      auto poll = control::ControlClient::connect(control_path(o.control));
      if (!poll.is_ok()) return;
      Progress line(true, "rolled back");
      while (!done) {
        auto st = (*poll)->call({{"command", "status"}});
        if (st.is_ok() && control::answer_status(*st).is_ok()) {
          const Json& rb = (*st)["status"]["rollback"];
          if (rb.value("active", false)) {
            uint64_t chunk = (*st)["status"]["store"]["chunk_size"].get<uint64_t>();
            line.set_total(rb["total_chunks"].get<uint64_t>() * chunk);
            line.update(rb["done_chunks"].get<uint64_t>() * chunk);
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
    });
  }
  auto r = (*client)->call({{"command", "rollback"}, {"snapshot", snapshot_ref(snapshot)}, {"force", force}});
  done = true;
  if (watcher.joinable()) watcher.join();
  if (!r.is_ok()) return fail(r.status());
  if (Status s = control::answer_status(*r); !s.is_ok()) return fail(s);
  if (progress) {  // the last line, however quick it was
    Progress last(true, "rolled back");
    uint64_t bytes = (*r)["rollback"].value("bytes", uint64_t{0});
    last.set_total(bytes);
    last.update(bytes, true);
  }
  if (o.json) {
    printf("%s\n", r->dump(2).c_str());
  } else {
    printf("rolled the origin back to snapshot %s (%llu chunks rewritten)\n", snapshot.c_str(),
           static_cast<unsigned long long>((*r)["rollback"]["chunks"].get<uint64_t>()));
  }
  return 0;
}

}  // namespace multisnap::cli
