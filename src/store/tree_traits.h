// Key/value traits shared by the stores' B-trees (btree/btree.h).
// kTreeKind values are persisted in every node: never renumber.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include <string>

#include "btree/btree.h"
#include "util/endian.h"

namespace multisnap {

namespace tree_kind {
constexpr uint32_t kSnapshots = 0x534e4150;       // 'SNAP' id -> snapshot record
constexpr uint32_t kNames = 0x4e414d45;           // 'NAME' (hash, id) -> id
constexpr uint32_t kRangeExceptions = 0x52584350;  // 'RXCP' (chunk, from) -> (to, store chunk)
constexpr uint32_t kLiveKeys = 0x4c495645;        // 'LIVE' range key -> snapshot id
constexpr uint32_t kBitmaskExceptions = 0x42584350;  // 'BXCP' (chunk, store chunk) -> mask
constexpr uint32_t kProperties = 0x50524f50;       // 'PROP' property id -> up to 254 bytes
}  // namespace tree_kind

// A u64 key with a u64 value; Kind tells the trees apart on disk.
template <uint32_t Kind>
struct U64Traits {
  using Key = uint64_t;
  using Value = uint64_t;
  static constexpr uint32_t kTreeKind = Kind;
  static constexpr uint16_t kKeySize = 8;
  static constexpr uint16_t kValueSize = 8;
  static void encode_key(const Key& k, uint8_t* p) { store_le(p, k); }
  static Key decode_key(const uint8_t* p) { return load_le<uint64_t>(p); }
  static void encode_value(const Value& v, uint8_t* p) { store_le(p, v); }
  static Value decode_value(const uint8_t* p) { return load_le<uint64_t>(p); }
  static bool less(const Key& a, const Key& b) { return a < b; }
  static std::string key_string(const Key& k) { return std::to_string(k); }
};

// A (u64, u64) key, ordered by the first then the second.
struct PairKey {
  uint64_t hi = 0;
  uint64_t lo = 0;
  friend bool operator==(const PairKey&, const PairKey&) = default;
};

template <uint32_t Kind, class V, uint16_t VSize>
struct PairKeyTraits {
  using Key = PairKey;
  using Value = V;
  static constexpr uint32_t kTreeKind = Kind;
  static constexpr uint16_t kKeySize = 16;
  static constexpr uint16_t kValueSize = VSize;
  static void encode_key(const Key& k, uint8_t* p) {
    store_le(p, k.hi);
    store_le(p + 8, k.lo);
  }
  static Key decode_key(const uint8_t* p) { return {load_le<uint64_t>(p), load_le<uint64_t>(p + 8)}; }
  static void encode_value(const Value& v, uint8_t* p) { v.encode(p); }
  static Value decode_value(const uint8_t* p) { return Value::decode(p); }
  static bool less(const Key& a, const Key& b) { return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo; }
  static std::string key_string(const Key& k) { return fmt::format("({}, {})", k.hi, k.lo); }
};

// The key right after k (for resuming a scan after k).
inline PairKey next_key(const PairKey& k) {
  return k.lo == UINT64_MAX ? PairKey{k.hi + 1, 0} : PairKey{k.hi, k.lo + 1};
}

struct U64Value {
  uint64_t v = 0;
  void encode(uint8_t* p) const { store_le(p, v); }
  static U64Value decode(const uint8_t* p) { return {load_le<uint64_t>(p)}; }
};

// A property: a u64 id -> up to 254 bytes (u16 length, then the bytes).
constexpr size_t kMaxPropertyBytes = 254;
struct PropertyValue {
  std::string bytes;
  void encode(uint8_t* p) const {
    std::memset(p, 0, 2 + kMaxPropertyBytes);
    store_le(p, static_cast<uint16_t>(bytes.size()));
    std::memcpy(p + 2, bytes.data(), bytes.size());
  }
  static PropertyValue decode(const uint8_t* p) {
    size_t n = std::min<size_t>(load_le<uint16_t>(p), kMaxPropertyBytes);
    return {std::string(reinterpret_cast<const char*>(p + 2), n)};
  }
};
struct PropertyTraits {
  using Key = uint64_t;
  using Value = PropertyValue;
  static constexpr uint32_t kTreeKind = tree_kind::kProperties;
  static constexpr uint16_t kKeySize = 8;
  static constexpr uint16_t kValueSize = 2 + kMaxPropertyBytes;
  static void encode_key(const Key& k, uint8_t* p) { store_le(p, k); }
  static Key decode_key(const uint8_t* p) { return load_le<uint64_t>(p); }
  static void encode_value(const Value& v, uint8_t* p) { v.encode(p); }
  static Value decode_value(const uint8_t* p) { return Value::decode(p); }
  static bool less(const Key& a, const Key& b) { return a < b; }
  static std::string key_string(const Key& k) { return "property " + std::to_string(k); }
};

}  // namespace multisnap
