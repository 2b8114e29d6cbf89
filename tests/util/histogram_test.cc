#include "util/histogram.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace multisnap {
namespace {

using std::chrono::microseconds;
using std::chrono::nanoseconds;

TEST(LatencyHistogram, BucketBoundsAreInclusivePowersOfTwoMicroseconds) {
  EXPECT_EQ(LatencyHistogram::bucket_of(0), 0);
  EXPECT_EQ(LatencyHistogram::bucket_of(4000), 0);     // 4 us: the first bucket
  EXPECT_EQ(LatencyHistogram::bucket_of(4001), 1);     // just over: the next
  EXPECT_EQ(LatencyHistogram::bucket_of(8000), 1);
  EXPECT_EQ(LatencyHistogram::bucket_of(8001), 2);
  EXPECT_EQ(LatencyHistogram::bucket_of(1'000'000), 8);  // 1 ms <= 1024 us
  for (int i = 0; i < LatencyHistogram::kBuckets; ++i) {
    uint64_t bound_ns = static_cast<uint64_t>(HistogramSnapshot::upper_seconds(i) * 1e9 + 0.5);
    EXPECT_EQ(LatencyHistogram::bucket_of(bound_ns), i) << i;
    EXPECT_EQ(LatencyHistogram::bucket_of(bound_ns + 1000), i + 1) << i;
  }
  EXPECT_EQ(LatencyHistogram::bucket_of(uint64_t{1} << 62), LatencyHistogram::kBuckets);
}

TEST(LatencyHistogram, RecordsCountSumAndBuckets) {
  LatencyHistogram h;
  h.record(microseconds(3));
  h.record(microseconds(100));
  h.record(std::chrono::seconds(100));  // beyond the last bucket: +Inf only
  h.record(nanoseconds(-5));            // a clock step back counts as 0
  HistogramSnapshot s = h.snapshot();
  EXPECT_EQ(s.count, 4u);
  EXPECT_EQ(s.sum_ns, 3'000u + 100'000u + 100'000'000'000u);
  EXPECT_EQ(s.buckets[0], 2u);
  EXPECT_EQ(s.buckets[5], 1u);  // 100 us <= 128 us
  uint64_t in_buckets = 0;
  for (uint64_t b : s.buckets) in_buckets += b;
  EXPECT_EQ(in_buckets, 3u);
}

TEST(LatencyHistogram, ConcurrentRecordsAreAllCounted) {
  LatencyHistogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 10000; ++i) h.record(microseconds(1 << (t * 3)));
    });
  for (auto& t : threads) t.join();
  HistogramSnapshot s = h.snapshot();
  EXPECT_EQ(s.count, 40000u);
  uint64_t in_buckets = 0;
  for (uint64_t b : s.buckets) in_buckets += b;
  EXPECT_EQ(in_buckets, 40000u);
}

}  // namespace
}  // namespace multisnap
