// Wall-clock time as persisted and shown: ns since the Unix epoch, and its
// ISO 8601 UTC form ("2026-11-21T09:24:27.798Z").
#pragma once

#include <cstdint>
#include <string>

namespace multisnap {

uint64_t wall_clock_ns();
std::string iso8601(uint64_t ns);

}  // namespace multisnap
