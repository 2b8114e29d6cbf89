// multisnap serve: run the daemon until SIGINT or SIGTERM. The first signal
// drains in-flight requests, commits and exits 0; a second one during that
// exits at once (the store reopens at its last commit).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
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

}  // namespace

int run_serve(const ServeArgs& a) {
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
  o.nbd = a.nbd.empty() ? std::vector<std::string>{"unix:multisnap.sock"} : a.nbd;
  o.control_path = control_path(a.control);
  auto cache = parse_size(a.cache_size);
  if (!cache.is_ok()) return fail(cache.status().annotate("--cache-size"));
  if (*cache < (1 << 20)) return fail(make_error(Code::kInvalidArgument, "--cache-size must be at least 1M"));
  if (a.copy_slots == 0 || a.copy_slots > 1024)
    return fail(make_error(Code::kInvalidArgument, "--copy-slots must be from 1 to 1024"));
  if (!(a.handshake_timeout >= 0 && a.handshake_timeout <= 86400))
    return fail(make_error(Code::kInvalidArgument, "--handshake-timeout must be from 0 to 86400 seconds"));
  // Rounded up: a tiny positive timeout must not become "none".
  o.nbd_handshake_timeout = std::chrono::milliseconds(std::llround(std::ceil(a.handshake_timeout * 1000)));
  o.engine.cache_bytes = *cache;
  o.engine.copy_slots = a.copy_slots;
  o.engine.read_only_snapshots = a.read_only_snapshots;
  o.engine.use_older_commit = a.use_older_commit;
  auto daemon = Daemon::start(o);
  if (!daemon.is_ok()) return fail(daemon.status());
  MS_LOG_INFO("serving {} (NBD: {}; control: {})", a.store, fmt::join((*daemon)->nbd_addresses(), ", "),
              o.control_path);

  // Wait for a signal, checking free space every few seconds meanwhile.
  int sig = 0;
  for (;;) {
    (*daemon)->check_space();
    timespec every{5, 0};
    siginfo_t info;
    sig = sigtimedwait(&sigs, &info, &every);
    if (sig > 0) break;
  }
  MS_LOG_INFO("{}: finishing requests in flight, committing, then exiting", strsignal(sig));
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
