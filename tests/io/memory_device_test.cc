// The crash simulation the crash tests rely on.
#include "support/memory_device.h"

#include <gtest/gtest.h>

#include <vector>

namespace multisnap {
namespace {

std::vector<uint8_t> read_all(MemoryDevice& d, uint64_t off, size_t len) {
  std::vector<uint8_t> v(len);
  EXPECT_TRUE(d.read(off, v.data(), len).is_ok());
  return v;
}

TEST(MemoryDeviceCrash, FlushedWritesSurvive) {
  MemoryDevice d(1 << 20);
  std::vector<uint8_t> a(8192, 0xaa);
  ASSERT_TRUE(d.write(0, a.data(), a.size()).is_ok());
  ASSERT_TRUE(d.flush().is_ok());
  std::mt19937_64 rng(1);
  d.crash(rng, {0.0, true});
  EXPECT_EQ(read_all(d, 0, 8192), a);
}

TEST(MemoryDeviceCrash, DropsOrKeepsUnflushedWrites) {
  std::vector<uint8_t> a(4096, 0xaa);
  for (double keep : {0.0, 1.0}) {
    MemoryDevice d(1 << 20);
    ASSERT_TRUE(d.write(4096, a.data(), a.size()).is_ok());
    EXPECT_EQ(d.unflushed_writes(), 1u);
    std::mt19937_64 rng(1);
    d.crash(rng, {keep, false});
    EXPECT_EQ(d.unflushed_writes(), 0u);
    auto got = read_all(d, 4096, 4096);
    EXPECT_EQ(got, keep == 1.0 ? a : std::vector<uint8_t>(4096, 0));
  }
}

TEST(MemoryDeviceCrash, TearsAtSectorGranularity) {
  bool saw_partial = false;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    MemoryDevice d(1 << 20);
    std::vector<uint8_t> a(65536, 0x5a);
    ASSERT_TRUE(d.write(0, a.data(), a.size()).is_ok());
    std::mt19937_64 rng(seed);
    d.crash(rng, {1.0, true});
    auto got = read_all(d, 0, a.size());
    size_t written = 0;
    for (size_t s = 0; s < got.size(); s += 512) {
      uint8_t first = got[s];
      ASSERT_TRUE(first == 0 || first == 0x5a);
      for (size_t i = s; i < s + 512; ++i) ASSERT_EQ(got[i], first) << "sector torn inside";
      written += first == 0x5a;
    }
    if (written > 0 && written < 128) saw_partial = true;
  }
  EXPECT_TRUE(saw_partial);
}

TEST(MemoryDeviceCrash, LaterWritesOverEarlierOnesInOrder) {
  MemoryDevice d(1 << 20);
  std::vector<uint8_t> a(512, 1), b(512, 2);
  ASSERT_TRUE(d.write(0, a.data(), 512).is_ok());
  ASSERT_TRUE(d.write(0, b.data(), 512).is_ok());
  std::mt19937_64 rng(3);
  d.crash(rng, {1.0, false});
  EXPECT_EQ(read_all(d, 0, 512), b);
}

TEST(MemoryDevice, ApplyReplaysWritesAndFlushes) {
  MemoryDevice d(1 << 20);
  std::vector<uint8_t> a(512, 7), b(512, 9);
  d.apply({TraceOp::Kind::kWrite, 0, a});
  d.apply({TraceOp::Kind::kFlush, 0, {}});
  d.apply({TraceOp::Kind::kWrite, 512, b});
  EXPECT_EQ(read_all(d, 0, 512), a);
  EXPECT_EQ(read_all(d, 512, 512), b);
  EXPECT_EQ(d.unflushed_writes(), 1u);
  std::mt19937_64 rng(1);
  d.crash(rng, {0.0, false});
  EXPECT_EQ(read_all(d, 0, 512), a);
  EXPECT_EQ(read_all(d, 512, 512), std::vector<uint8_t>(512, 0));
}

TEST(MemoryDevice, PokeBypassesTheLog) {
  MemoryDevice d(1 << 20);
  uint8_t x = 0xee;
  d.poke(10, &x, 1);
  std::mt19937_64 rng(1);
  d.crash(rng, {0.0, false});
  EXPECT_EQ(read_all(d, 10, 1)[0], 0xee);
}

}  // namespace
}  // namespace multisnap
