// Human sizes: "64K", "10G", "4096", "1.5M" (binary multiples, as dd and
// qemu-img read them). Used by every CLI option that takes a size.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "util/status.h"

namespace multisnap {

Result<uint64_t> parse_size(std::string_view text);
std::string format_size(uint64_t bytes);  // "64 KiB", "1.5 GiB"

inline bool is_power_of_two(uint64_t v) { return v && !(v & (v - 1)); }
inline uint64_t div_round_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
inline uint64_t round_up(uint64_t a, uint64_t b) { return div_round_up(a, b) * b; }

}  // namespace multisnap
