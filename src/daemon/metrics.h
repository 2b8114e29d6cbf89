// What `serve --metrics` exposes (docs/design.md, "Metrics"): per-export-kind
// request counters and latency histograms kept here, on the NBD side of the
// engine (EngineBackend wraps each request's completion), plus what the
// engine and the NBD server count already, rendered in the Prometheus text
// exposition format 0.0.4.
//
// Thread-safe: record() runs on any thread (relaxed atomics, no lock);
// render_metrics() reads whatever values are current.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <string>

#include "engine/engine.h"
#include "nbd/backend.h"
#include "nbd/server.h"
#include "util/histogram.h"

namespace multisnap {

class RequestMetrics {
 public:
  enum Kind { kOrigin, kSnapshot, kKinds };
  enum Op { kRead, kWrite, kFlush, kTrim, kWriteZeroes, kCache, kOps };
  static const char* kind_name(int k);
  static const char* op_name(int o);

  struct OpCounters {
    std::atomic<uint64_t> requests{0}, bytes{0}, errors{0};
    LatencyHistogram latency;
  };

  // `done`, wrapped so that its completion is counted (bytes only on
  // success) and timed from now.
  nbd::Done wrap(Kind kind, Op op, uint64_t bytes, nbd::Done done);
  const OpCounters& at(int kind, int op) const { return ops_[kind][op]; }

 private:
  std::array<std::array<OpCounters, kOps>, kKinds> ops_;
};

// The exposition text: every metric with HELP and TYPE lines.
std::string render_metrics(const EngineStatus& engine, const nbd::ServerStats& nbd, const RequestMetrics& requests);

}  // namespace multisnap
