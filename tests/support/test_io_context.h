// IoContexts for tests, besides the production ones (io/io_context.h).
//
//  * make_reordering_io_context(seed): holds ops and executes a random subset
//    of them, in random order, at each run(): tests use it to make in-flight
//    I/O overlap with everything else the engine does.
//  * make_test_io_context(kind, seed): one of the three by name, for test
//    parameters; kUring falls back to synchronous where io_uring is missing.
#pragma once

#include <memory>

#include "io/io_context.h"

namespace multisnap {

std::unique_ptr<IoContext> make_reordering_io_context(uint64_t seed);

enum class TestIo { kUring, kSync, kReordering };
std::unique_ptr<IoContext> make_test_io_context(TestIo kind, uint64_t seed = 1);

}  // namespace multisnap
