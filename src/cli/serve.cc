// multisnap serve: run the daemon until SIGINT or SIGTERM (or, with --nbd
// stdio, until its one client has gone). The first signal drains in-flight
// requests, commits and exits 0; a second one during that exits at once
// (the store reopens at its last commit).
//
// Socket activation (systemd's protocol, sd_listen_fds(3)): when LISTEN_PID
// is this process, LISTEN_FDS descriptors from 3 on are listening sockets;
// LISTEN_FDNAMES names them, and the one named "control" is the control
// socket, every other one NBD. The variables are removed from the
// environment either way, so that no child takes them for its own.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <thread>

#include "cli/commands.h"
#include "daemon/daemon.h"
#include "util/log.h"
#include "util/units.h"

namespace multisnap::cli {
namespace {

// Every NBD client holds two descriptors (its socket and an eventfd). With
// the usual soft limit of 1024, accept() would run out long before 1024
// clients, and the control socket with it; the hard limit is what the
// administrator allows. Nothing here uses select().
void raise_descriptor_limit() {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t was = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
    MS_LOG_DEBUG("open file limit raised from {} to {}", was, rl.rlim_cur);
  }
}

// The sockets systemd (or anything speaking its protocol) passed.
struct Activation {
  bool active = false;
  std::vector<int> nbd;
  int control = -1;
};

constexpr int kFirstListenFd = 3;  // SD_LISTEN_FDS_START

Result<Activation> take_activation() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* fds = std::getenv("LISTEN_FDS");
  const char* names = std::getenv("LISTEN_FDNAMES");
  std::string pid_s = pid ? pid : "", fds_s = fds ? fds : "", names_s = names ? names : "";
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  Activation act;
  if (pid_s.empty() || fds_s.empty()) return act;
  char* end = nullptr;
  long for_pid = std::strtol(pid_s.c_str(), &end, 10);
  if (*end != '\0' || for_pid != getpid()) return act;  // meant for another process
  long n = std::strtol(fds_s.c_str(), &end, 10);
  if (*end != '\0' || n < 1 || n > 1024) {
    return make_error(Code::kInvalidArgument, "LISTEN_FDS='{}' is not a number of sockets", fds_s);
  }
  std::vector<std::string> split;
  for (size_t start = 0; !names_s.empty();) {
    size_t colon = names_s.find(':', start);
    split.push_back(names_s.substr(start, colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  if (!split.empty() && split.size() != static_cast<size_t>(n)) {
    MS_LOG_WARN("LISTEN_FDNAMES names {} sockets, LISTEN_FDS passes {}: taking every one as NBD", split.size(), n);
    split.clear();
  }
  act.active = true;
  for (int i = 0; i < n; ++i) {
    int fd = kFirstListenFd + i;
    if (fcntl(fd, F_GETFD) < 0) {
      return make_error(Code::kInvalidArgument, "LISTEN_FDS={} but descriptor {} is not open", n, fd);
    }
    if (!split.empty() && split[i] == "control") {
      if (act.control >= 0) return make_error(Code::kInvalidArgument, "two sockets named 'control' in LISTEN_FDNAMES");
      act.control = fd;
    } else {
      act.nbd.push_back(fd);
    }
  }
  return act;
}

Result<nbd::TlsMode> tls_mode(const ServeArgs& a) {
  bool credentials = !a.tls_certificates.empty() || !a.tls_psk.empty();
  if (a.tls_verify_peer && a.tls_certificates.empty()) {
    return make_error(Code::kInvalidArgument, "--tls-verify-peer goes with --tls-certificates");
  }
  if (a.tls.empty()) return credentials ? nbd::TlsMode::kRequire : nbd::TlsMode::kOff;
  if (a.tls == "on") return nbd::TlsMode::kOn;
  if (a.tls == "require") return nbd::TlsMode::kRequire;
  if (a.tls != "off") return make_error(Code::kInvalidArgument, "--tls takes off, on or require, not '{}'", a.tls);
  if (credentials || a.tls_verify_peer) {
    return make_error(Code::kInvalidArgument, "--tls off, but TLS credentials were given");
  }
  return nbd::TlsMode::kOff;
}

// Where NBD clients come from and where the control socket is.
Status plan_sockets(const ServeArgs& a, const Activation& act, DaemonOptions* o) {
  bool stdio = std::find(a.nbd.begin(), a.nbd.end(), "stdio") != a.nbd.end();
  if (stdio && (a.nbd.size() > 1 || act.active)) {
    return make_error(Code::kInvalidArgument,
                      "--nbd stdio serves one client on standard input and output, with no other --nbd "
                      "and no socket activation");
  }
  o->nbd_stdio = stdio;
  if (!stdio) o->nbd = a.nbd;
  o->nbd_fds = act.nbd;
  // Activated without --nbd: only what was passed (perhaps only a control socket).
  if (!stdio && a.nbd.empty() && !act.active) o->nbd = {"unix:multisnap.sock"};
  if (!stdio && o->nbd.empty() && o->nbd_fds.empty()) {
    return make_error(Code::kInvalidArgument, "systemd passed no NBD socket (name it anything but 'control') and "
                                              "no --nbd was given");
  }
  if (act.control >= 0 && !a.control.empty()) {
    return make_error(Code::kInvalidArgument, "--control given, and systemd passed a socket named 'control' too");
  }
  o->control_fd = act.control;
  // Started by systemd or a client (libnbd's [ ... ], connect_command), the
  // usual defaults would collide with another serve in the same directory
  // or the one $MULTISNAP_CONTROL names for commands: no control socket
  // unless asked for.
  if (act.active || stdio) {
    o->control_path = a.control;
  } else {
    o->control_path = control_path(a.control);
  }
  return Status::ok();
}

}  // namespace

int run_serve(const ServeArgs& a) {
  auto activation = take_activation();
  if (!activation.is_ok()) return fail(activation.status());
  // Signals are taken synchronously by this thread; every thread started
  // from here on inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  raise_descriptor_limit();

  DaemonOptions o;
  o.store_path = a.store;
  o.origin_path = a.origin;
  o.force_origin = a.force;
  o.metrics = a.metrics;
  o.save_origin = a.save;
  if (a.save && a.origin.empty()) return fail(make_error(Code::kInvalidArgument, "--save needs --origin PATH"));
  if (Status s = plan_sockets(a, *activation, &o); !s.is_ok()) return fail(s);
  auto tls = tls_mode(a);
  if (!tls.is_ok()) return fail(tls.status());
  o.tls = *tls;
  o.tls_credentials = {a.tls_certificates, a.tls_psk, a.tls_verify_peer};
  // --nbd stdio: the client's end is ours. SIGUSR1 to ourselves is the way
  // out of the wait below; not SIGTERM, which during the stop that a
  // SIGTERM began would mean "exit at once".
  o.on_stdio_closed = [] { kill(getpid(), SIGUSR1); };
  sigset_t first = sigs;  // what starts the stop
  if (o.nbd_stdio) {
    sigaddset(&first, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &first, nullptr);  // before any thread starts
  }
  auto cache = parse_size(a.cache_size);
  if (!cache.is_ok()) return fail(cache.status().annotate("--cache-size"));
  if (*cache < (1 << 20)) return fail(make_error(Code::kInvalidArgument, "--cache-size must be at least 1M"));
  if (a.copy_slots > 1024)
    return fail(make_error(Code::kInvalidArgument, "--copy-slots must be from 1 to 1024"));
  if (!(a.handshake_timeout >= 0 && a.handshake_timeout <= 86400))
    return fail(make_error(Code::kInvalidArgument, "--handshake-timeout must be from 0 to 86400 seconds"));
  // Rounded up: a tiny positive timeout must not become "none".
  o.nbd_handshake_timeout = std::chrono::milliseconds(std::llround(std::ceil(a.handshake_timeout * 1000)));
  o.engine.cache_bytes = *cache;
  o.engine.copy_slots = a.copy_slots;
  o.engine.read_only_snapshots = a.read_only_snapshots;
  o.buffered_copies = a.buffered_copies;
  o.engine.use_older_commit = a.use_older_commit;
  o.engine.map_origin = !a.no_mapped_copies;
  if (a.whole_origin_writes) o.origin_write_piece = 0;
  if (a.no_inline_origin_writes) o.engine.inline_origin_write_max = 0;
  auto daemon = Daemon::start(o);
  if (!daemon.is_ok()) return fail(daemon.status());

  // Wait for a signal, checking free space every few seconds meanwhile.
  int sig = 0;
  for (;;) {
    (*daemon)->check_space();
    timespec every{5, 0};
    siginfo_t info;
    sig = sigtimedwait(&first, &info, &every);
    if (sig > 0) break;
  }
  if (sig == SIGUSR1) {
    MS_LOG_INFO("the NBD client on standard input and output has gone: committing, then exiting");
  } else {
    MS_LOG_INFO("{}: finishing requests in flight, committing, then exiting", strsignal(sig));
  }
  std::atomic<bool> done{false};
  Status result;
  std::thread stopper([&] {
    result = (*daemon)->stop();
    done = true;
  });
  timespec tick{0, 100 * 1000 * 1000};
  while (!done) {
    siginfo_t info;
    int again = sigtimedwait(&sigs, &info, &tick);
    if (again > 0) {
      fprintf(stderr, "multisnap: %s again: exiting at once; the store reopens at its last commit\n",
              strsignal(again));
      _exit(128 + again);
    }
  }
  stopper.join();
  daemon->reset();
  if (!result.is_ok()) return fail(result.annotate("while stopping"));
  MS_LOG_INFO("stopped cleanly");
  return 0;
}

}  // namespace multisnap::cli
