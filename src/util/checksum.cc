#include "util/checksum.h"

#include <xxhash.h>

namespace multisnap {

uint64_t checksum64(const void* data, size_t len, uint64_t seed) {
  return XXH3_64bits_withSeed(data, len, seed);
}

}  // namespace multisnap

namespace multisnap {

StreamingChecksum64::StreamingChecksum64(uint64_t seed) : state_(XXH3_createState()) {
  XXH3_64bits_reset_withSeed(static_cast<XXH3_state_t*>(state_), seed);
}
StreamingChecksum64::~StreamingChecksum64() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void StreamingChecksum64::reset(uint64_t seed) {
  XXH3_64bits_reset_withSeed(static_cast<XXH3_state_t*>(state_), seed);
}
void StreamingChecksum64::update(const void* data, size_t len) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, len);
}
uint64_t StreamingChecksum64::digest() const { return XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_)); }

}  // namespace multisnap
