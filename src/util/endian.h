// Little-endian load/store for on-disk structures. Every persisted integer is
// little-endian. The packed *_disk structs are used directly on little-endian
// hosts, which is all multisnap supports (checked below).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace multisnap {

static_assert(std::endian::native == std::endian::little,
              "multisnap's on-disk structs assume a little-endian host");

template <typename T>
inline T load_le(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
inline void store_le(void* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace multisnap
