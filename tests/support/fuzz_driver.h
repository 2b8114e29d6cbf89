// Runs one byte string, as a client would send it, through the handshake
// (Negotiation) and the transmission phase (Transmission) against a
// MemoryBackend, without sockets. The first input byte picks how the rest is
// split into reads, so partial messages are exercised too. Used by the
// nbd_fuzz libFuzzer target and by a randomized unit test. Not thread-safe
// (one shared MemoryBackend).
#pragma once

#include <cstddef>
#include <cstdint>

#include "nbd/transmission.h"

namespace multisnap::nbd {

// What one input did, for tests to assert on (the fuzzer ignores it).
struct FuzzRun {
  bool negotiated = false;        // the handshake reached the transmission phase
  TransmissionCounters counters;  // of the transmission phase, if reached
  uint64_t reply_bytes = 0;       // bytes the transmission phase sent back
};

FuzzRun run_fuzz_input(const uint8_t* data, size_t size);

}  // namespace multisnap::nbd
