#include "util/clock.h"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace multisnap {

uint64_t wall_clock_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::string iso8601(uint64_t ns) {
  time_t secs = static_cast<time_t>(ns / 1000000000ull);
  tm t;
  gmtime_r(&secs, &t);
  char buf[40];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  snprintf(buf + n, sizeof buf - n, ".%03uZ", static_cast<unsigned>((ns / 1000000) % 1000));
  return buf;
}

}  // namespace multisnap
