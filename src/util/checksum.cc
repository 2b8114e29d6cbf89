#include "util/checksum.h"

#include <xxhash.h>

namespace multisnap {

uint64_t checksum64(const void* data, size_t len, uint64_t seed) {
  return XXH3_64bits_withSeed(data, len, seed);
}

}  // namespace multisnap
