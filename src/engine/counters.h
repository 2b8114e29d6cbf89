// EngineCounters kept with relaxed atomics: bumped from connection threads
// (direct origin I/O) and the engine thread without a lock.
#pragma once

#include <atomic>

#include "engine/engine.h"

namespace multisnap {

struct AtomicCounters {
  std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, trims{0}, zeroes{0};
  std::atomic<uint64_t> bytes_read{0}, bytes_written{0};
  std::atomic<uint64_t> copy_jobs{0}, copy_runs{0}, copy_runs_mapped{0}, chunks_copied{0}, commits{0};
  std::atomic<uint64_t> retries{0}, errors{0};
  std::atomic<uint64_t> direct_writes{0}, direct_reads{0}, origin_writes_inline{0};
  LatencyHistogram copy_latency;    // a copy job's data I/O: start to written
  LatencyHistogram commit_latency;  // one commit of the store

  static void add(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

  EngineCounters snapshot() const {
    auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    EngineCounters c;
    c.reads = v(reads), c.writes = v(writes), c.flushes = v(flushes), c.trims = v(trims), c.zeroes = v(zeroes);
    c.bytes_read = v(bytes_read), c.bytes_written = v(bytes_written);
    c.copy_jobs = v(copy_jobs), c.copy_runs = v(copy_runs), c.copy_runs_mapped = v(copy_runs_mapped);
    c.chunks_copied = v(chunks_copied), c.commits = v(commits);
    c.retries = v(retries), c.errors = v(errors), c.direct_writes = v(direct_writes);
    c.direct_reads = v(direct_reads), c.origin_writes_inline = v(origin_writes_inline);
    c.copy_latency = copy_latency.snapshot(), c.commit_latency = commit_latency.snapshot();
    return c;
  }
};

}  // namespace multisnap
