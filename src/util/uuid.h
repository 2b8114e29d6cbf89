// RFC 4122 UUIDs: 16 bytes, shown as 8-4-4-4-12 lowercase hex digits.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "util/status.h"

namespace multisnap {

struct Uuid {
  std::array<uint8_t, 16> bytes{};

  bool is_nil() const;
  std::string to_string() const;
  static std::optional<Uuid> parse(std::string_view text);
  bool operator==(const Uuid&) const = default;
};

// A random (version 4) UUID from getrandom(2); fails only if the kernel's
// random source does.
Result<Uuid> random_uuid();

}  // namespace multisnap
