// Runs one byte string, as a client would send it, through the handshake
// (Negotiation) and the transmission phase (Transmission) against a
// MemoryBackend, without sockets. The first input byte picks how the rest is
// split into reads, so partial messages are exercised too. Used by the
// nbd_fuzz libFuzzer target and by a randomized unit test. Not thread-safe
// (one shared MemoryBackend).
#pragma once

#include <cstddef>
#include <cstdint>

namespace multisnap::nbd {

void run_fuzz_input(const uint8_t* data, size_t size);

}  // namespace multisnap::nbd
