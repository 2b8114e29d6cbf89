// StoreFormat: which exception store a store device holds. The superblock
// carries it as a plain format code (meta/superblock.h, docs/format.md);
// the store layer gives the code its meaning.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace multisnap {

// Persisted (the superblock's format code): never renumber.
enum class StoreFormat : uint32_t { kRange = 1, kBitmask = 2 };

const char* store_format_name(StoreFormat f);
// "range" or "bitmask".
std::optional<StoreFormat> parse_store_format(std::string_view name);
// The format a superblock's code names, if it names one.
std::optional<StoreFormat> store_format_from_code(uint32_t code);
constexpr uint32_t store_format_code(StoreFormat f) { return static_cast<uint32_t>(f); }

}  // namespace multisnap
