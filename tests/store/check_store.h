// Runs `multisnap check` in-process: opens the store read-only on `dev` and
// returns every problem found (or why it would not open).
#pragma once

#include <string>
#include <vector>

#include "store/exception_store.h"

namespace multisnap::testing {

inline std::vector<std::string> check_store(BlockDevice& dev) {
  TmOptions ro;
  ro.read_only = true;
  auto st = open_store(dev, ro);
  if (!st.is_ok()) return {"open: " + st.status().to_string()};
  CheckReport report;
  (*st)->check(report);
  return report.problems();
}

}  // namespace multisnap::testing
