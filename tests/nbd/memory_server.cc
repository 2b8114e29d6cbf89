// nbd_memory_server: serves one MemoryBackend export ("origin", also the
// default export) until SIGINT or SIGTERM. For benchmarks (bench.sh) and
// for trying clients by hand:
//
//   nbd_memory_server --listen unix:/tmp/m.sock [--listen tcp::10809]
//                     [--size 1G] [--completion-threads N] [--log info]
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "support/memory_backend.h"
#include "nbd/server.h"
#include "util/log.h"
#include "util/units.h"

using namespace multisnap;

int main(int argc, char** argv) {
  nbd::ServerOptions options;
  nbd::MemoryBackendOptions backend_options;
  uint64_t size = 1ull << 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    std::string value = argv[i + 1];
    if (flag == "--listen") {
      options.listen.push_back(value);
    } else if (flag == "--size") {
      auto parsed = parse_size(value);
      if (!parsed.is_ok()) return fprintf(stderr, "bad size %s\n", value.c_str()), 2;
      size = *parsed;
    } else if (flag == "--completion-threads") {
      backend_options.completion_threads = static_cast<uint32_t>(std::stoul(value));
    } else if (flag == "--log") {
      LogLevel level;
      if (!parse_log_level(value, &level)) return fprintf(stderr, "bad log level\n"), 2;
      set_log_level(level);
    } else {
      return fprintf(stderr, "unknown option %s\n", flag.c_str()), 2;
    }
  }
  nbd::MemoryBackend backend(backend_options);
  Status added = backend.add_export(
      {.name = "origin", .description = "memory", .size = size, .can_multi_conn = true});
  if (!added.is_ok()) return fprintf(stderr, "%s\n", added.to_string().c_str()), 1;

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts

  auto server = nbd::Server::start(backend, options);
  if (!server.is_ok()) return fprintf(stderr, "%s\n", server.status().to_string().c_str()), 1;
  for (const std::string& a : (*server)->addresses()) printf("listening on %s\n", a.c_str());
  fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  (*server)->stop();
  nbd::ServerStats s = (*server)->stats();
  fprintf(
      stderr, "requests %llu, read %llu bytes, written %llu bytes, errors %llu\n",
      static_cast<unsigned long long>(s.requests), static_cast<unsigned long long>(s.bytes_read),
      static_cast<unsigned long long>(s.bytes_written), static_cast<unsigned long long>(s.errors));
  return 0;
}
