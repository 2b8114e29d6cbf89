// libFuzzer entry point: see fuzz_driver.h and docs/nbd.md.
#include <cstddef>
#include <cstdint>

#include "support/fuzz_driver.h"
#include "util/log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    multisnap::set_log_level(multisnap::LogLevel::kOff);
    return true;
  }();
  (void)quiet;
  multisnap::nbd::run_fuzz_input(data, size);
  return 0;
}
