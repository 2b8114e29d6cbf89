// Checksums for metadata blocks and streams: XXH3-64 (libxxhash), seeded so
// that different structures with equal bytes do not share checksums.
#pragma once

#include <cstddef>
#include <cstdint>

namespace multisnap {

uint64_t checksum64(const void* data, size_t len, uint64_t seed);

}  // namespace multisnap
