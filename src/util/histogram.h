// LatencyHistogram: durations counted in fixed log-scale buckets, for the
// Prometheus endpoint (`serve --metrics`). Recording is lock-free (relaxed
// atomic adds: one bucket, the count, the sum), so it is cheap enough for
// every request on any thread; a reader sees each field at some recent
// value, never a torn one (the count may run a request ahead of a bucket).
//
// Bucket i (0 <= i < kBuckets) counts durations of at most 2^(i+2) us:
// 4 us, 8 us, ... 2^25 us (about 33.6 s); longer ones only count in
// `count` and `sum` (Prometheus's +Inf bucket).
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>

namespace multisnap {

struct HistogramSnapshot {
  static constexpr int kBuckets = 24;
  std::array<uint64_t, kBuckets> buckets{};  // per bucket, not cumulative
  uint64_t count = 0;
  uint64_t sum_ns = 0;
  // The upper bound of bucket i, in seconds.
  static double upper_seconds(int i) { return static_cast<double>(uint64_t{1} << (i + 2)) * 1e-6; }
};

class LatencyHistogram {
 public:
  static constexpr int kBuckets = HistogramSnapshot::kBuckets;

  void record(std::chrono::nanoseconds d) {
    uint64_t ns = d.count() > 0 ? static_cast<uint64_t>(d.count()) : 0;
    int i = bucket_of(ns);
    if (i < kBuckets) buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(ns, std::memory_order_relaxed);
  }
  void record_since(std::chrono::steady_clock::time_point start) {
    record(std::chrono::steady_clock::now() - start);
  }

  HistogramSnapshot snapshot() const {
    HistogramSnapshot s;
    for (int i = 0; i < kBuckets; ++i) s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    s.count = count_.load(std::memory_order_relaxed);
    s.sum_ns = sum_ns_.load(std::memory_order_relaxed);
    return s;
  }

  // The bucket of a duration; kBuckets when it is longer than the last.
  static int bucket_of(uint64_t ns) {
    uint64_t us = (ns + 999) / 1000;  // rounded up: 4.2 us is not "at most 4 us"
    if (us <= 4) return 0;
    int i = std::bit_width(us - 1) - 2;  // smallest i with us <= 2^(i+2)
    return i < kBuckets ? i : kBuckets;
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0};
};

}  // namespace multisnap
