#include "util/units.h"

#include <cmath>
#include <cstdlib>

namespace multisnap {

Result<uint64_t> parse_size(std::string_view text) {
  std::string s(text);
  if (s.empty()) return make_error(Code::kInvalidArgument, "empty size");
  char* end = nullptr;
  errno = 0;
  double number = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || errno || number < 0 || !std::isfinite(number))
    return make_error(Code::kInvalidArgument, "'{}' is not a size (examples: 4096, 64K, 10G)", s);
  std::string suffix(end);
  uint64_t mult = 1;
  if (!suffix.empty()) {
    static const std::string_view kUnits = "KMGTP";
    char c = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    std::string_view rest = std::string_view(suffix).substr(1);
    size_t power = kUnits.find(c);
    bool plain_bytes = (c == 'B' && rest.empty());
    bool ok_rest = rest.empty() || rest == "B" || rest == "iB" || rest == "ib" || rest == "b";
    if (!plain_bytes && (power == std::string_view::npos || !ok_rest))
      return make_error(Code::kInvalidArgument, "'{}' has an unknown size suffix '{}'", s, suffix);
    if (!plain_bytes) mult = 1ull << (10 * (power + 1));
  }
  double bytes = number * static_cast<double>(mult);
  if (bytes >= 18446744073709551615.0)
    return make_error(Code::kInvalidArgument, "'{}' is too large", s);
  if (bytes != std::floor(bytes))
    return make_error(Code::kInvalidArgument, "'{}' is not a whole number of bytes", s);
  return static_cast<uint64_t>(bytes);
}

std::string format_size(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  double v = static_cast<double>(bytes);
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return fmt::format("{} B", bytes);
  if (v == std::floor(v)) return fmt::format("{:.0f} {}", v, units[u]);
  return fmt::format("{:.1f} {}", v, units[u]);
}

}  // namespace multisnap
