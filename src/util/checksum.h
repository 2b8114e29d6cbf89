// Checksums for metadata blocks and streams: XXH3-64 (libxxhash), seeded so
// that different structures with equal bytes do not share checksums.
#pragma once

#include <cstddef>
#include <cstdint>

namespace multisnap {

uint64_t checksum64(const void* data, size_t len, uint64_t seed);

}  // namespace multisnap

namespace multisnap {

// XXH3-64 over data given in pieces (equal to checksum64 of their concatenation).
class StreamingChecksum64 {
 public:
  explicit StreamingChecksum64(uint64_t seed);
  ~StreamingChecksum64();
  StreamingChecksum64(const StreamingChecksum64&) = delete;
  StreamingChecksum64& operator=(const StreamingChecksum64&) = delete;
  void reset(uint64_t seed);
  void update(const void* data, size_t len);
  uint64_t digest() const;

 private:
  void* state_;
};

}  // namespace multisnap
