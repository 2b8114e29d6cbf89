// Runs `multisnap check` in-process: opens the store read-only on `dev` and
// walks all committed metadata.
#pragma once

#include <string>
#include <vector>

#include "store/exception_store.h"

namespace multisnap::testing {

// The report, or why the store would not open. With commit_findings, damage
// to the commit record copies found at open comes first, as `multisnap
// check` reports it (a warning, or a problem when something is lost).
inline Result<CheckReport> check_report(BlockDevice& dev, bool commit_findings = false) {
  TmOptions ro;
  ro.read_only = true;
  MS_ASSIGN_OR_RETURN(auto st, open_store(dev, ro));
  CheckReport report;
  if (commit_findings)
    for (const CommitRecordFinding& f : st->commit_findings()) f.serious ? report.problem(f.text) : report.warning(f.text);
  st->check(report);
  return report;
}

// Every problem found (or why the store would not open).
inline std::vector<std::string> check_store(BlockDevice& dev) {
  auto report = check_report(dev);
  if (!report.is_ok()) return {"open: " + report.status().to_string()};
  return report->problems();
}

}  // namespace multisnap::testing
