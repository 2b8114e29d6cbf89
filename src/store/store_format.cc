#include "store/store_format.h"

namespace multisnap {

const char* store_format_name(StoreFormat f) {
  switch (f) {
    case StoreFormat::kRange: return "range";
    case StoreFormat::kBitmask: return "bitmask";
  }
  return "unknown";
}

std::optional<StoreFormat> parse_store_format(std::string_view name) {
  if (name == "range") return StoreFormat::kRange;
  if (name == "bitmask") return StoreFormat::kBitmask;
  return std::nullopt;
}

std::optional<StoreFormat> store_format_from_code(uint32_t code) {
  switch (code) {
    case store_format_code(StoreFormat::kRange): return StoreFormat::kRange;
    case store_format_code(StoreFormat::kBitmask): return StoreFormat::kBitmask;
  }
  return std::nullopt;
}

}  // namespace multisnap
