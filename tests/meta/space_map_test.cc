#include "meta/space_map.h"

#include <gtest/gtest.h>

#include <set>

#include "meta/meta_fixture.h"

namespace multisnap {
namespace {

TEST(SpaceMap, AllocatesEveryUnitOnceThenReportsFull) {
  MemoryDevice dev(64 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 65536)).is_ok());
  auto tm = testing::open_tm(dev);
  SpaceMap& data = tm->data_space();
  std::set<uint64_t> seen;
  for (uint64_t i = 0; i < data.total(); ++i) {
    auto u = data.allocate();
    ASSERT_TRUE(u.is_ok()) << i << ": " << u.status().to_string();
    ASSERT_TRUE(seen.insert(*u).second) << "unit " << *u << " twice";
    ASSERT_LT(*u, data.total());
  }
  auto full = data.allocate();
  ASSERT_FALSE(full.is_ok());
  EXPECT_EQ(full.status().code(), Code::kNoSpace);
}

TEST(SpaceMap, FreedUnitsWaitForTheCommit) {
  MemoryDevice dev(64 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 65536)).is_ok());
  auto tm = testing::open_tm(dev);
  SpaceMap& data = tm->data_space();
  std::vector<uint64_t> units;
  for (uint64_t i = 0; i < data.total(); ++i) units.push_back(*data.allocate());
  ASSERT_TRUE(tm->commit().is_ok());
  ASSERT_TRUE(data.free(units[10]).is_ok());
  EXPECT_EQ(data.used(), data.total() - 1);
  EXPECT_FALSE(*data.is_allocated(units[10]));
  EXPECT_TRUE(*data.is_allocated_committed(units[10]));
  EXPECT_EQ(data.allocate().status().code(), Code::kNoSpace);  // not before the commit
  ASSERT_TRUE(tm->commit().is_ok());
  auto again = data.allocate();
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(*again, units[10]);
}

TEST(SpaceMap, UnitsAllocatedAndFreedInOneTransactionAreReusable) {
  MemoryDevice dev(64 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 65536)).is_ok());
  auto tm = testing::open_tm(dev);
  SpaceMap& data = tm->data_space();
  uint64_t u = *data.allocate();
  ASSERT_TRUE(data.free(u).is_ok());
  EXPECT_FALSE(*data.is_allocated_committed(u));
  EXPECT_EQ(data.used(), 0u);
}

TEST(SpaceMap, DoubleFreeIsCorruption) {
  MemoryDevice dev(64 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 65536)).is_ok());
  auto tm = testing::open_tm(dev);
  uint64_t u = *tm->data_space().allocate();
  ASSERT_TRUE(tm->data_space().free(u).is_ok());
  EXPECT_EQ(tm->data_space().free(u).code(), Code::kCorruption);
  EXPECT_EQ(tm->data_space().free(tm->data_space().total()).code(), Code::kCorruption);
}

TEST(SpaceMap, SurvivesReopenAndSpansManyBitmaps) {
  MemoryDevice dev(600 << 20);  // 153,600 data chunks of 4 KiB: five bitmaps
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 4096)).is_ok());
  std::vector<uint64_t> units;
  {
    auto tm = testing::open_tm(dev, 64 * kBlockSize);
    ASSERT_GT(tm->data_space().bitmaps(), 3u);
    for (int i = 0; i < 100000; ++i) units.push_back(*tm->data_space().allocate());
    for (int i = 0; i < 100000; i += 3) ASSERT_TRUE(tm->data_space().free(units[i]).is_ok());
    ASSERT_TRUE(tm->commit().is_ok());
  }
  auto tm = testing::open_tm(dev, 64 * kBlockSize);
  EXPECT_EQ(tm->data_space().used(), 100000u - 33334u);
  for (int i = 0; i < 100000; ++i) ASSERT_EQ(*tm->data_space().is_allocated(units[i]), i % 3 != 0) << i;
  auto bits = tm->data_space().committed_bits();
  ASSERT_TRUE(bits.is_ok());
  EXPECT_EQ(static_cast<uint64_t>(std::count(bits->begin(), bits->end(), true)), tm->data_space().used());
}

// The data space reuses what it freed before it takes new units (the
// frontier, space_map.h): under churn the units in use stay packed at the
// start, so a sparse store file stays as sparse as its peak use. The old
// next-fit cursor swept the whole space here, 64 units per round.
TEST(SpaceMap, ChurnStaysBelowThePeakUse) {
  MemoryDevice dev(256 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 65536)).is_ok());
  auto tm = testing::open_tm(dev);
  SpaceMap& data = tm->data_space();
  ASSERT_GT(data.total(), 64u * 40);
  std::vector<uint64_t> kept;  // a few live units in between, as copies that stay
  uint64_t highest = 0;
  for (int round = 0; round < 40; ++round) {
    std::vector<uint64_t> units;
    for (int i = 0; i < 64; ++i) {
      auto u = data.allocate();
      ASSERT_TRUE(u.is_ok()) << u.status().to_string();
      highest = std::max(highest, *u);
      units.push_back(*u);
    }
    kept.push_back(units[round % 64]);
    ASSERT_TRUE(tm->commit().is_ok());
    for (uint64_t u : units) {
      if (u == kept.back()) continue;
      ASSERT_TRUE(data.free(u).is_ok());
    }
    ASSERT_TRUE(tm->commit().is_ok());
  }
  // Peak use: 64 + the kept ones.
  EXPECT_LT(highest, 64u + 40 + 1) << "the allocator swept past its peak use";
  // After a reopen the frontier is found again from the bitmaps.
  tm = testing::open_tm(dev);
  SpaceMap& again = tm->data_space();
  for (int i = 0; i < 64; ++i) {
    auto u = again.allocate();
    ASSERT_TRUE(u.is_ok());
    EXPECT_LT(*u, 64u + 40 + 1);
  }
  // Freed units wait for the commit even below the frontier, and the
  // frontier moves on when nothing below it is free.
  ASSERT_TRUE(tm->commit().is_ok());
  const uint64_t f = again.frontier();
  std::set<uint64_t> in_use;
  for (uint64_t u = 0; u < f; ++u)
    if (*again.is_allocated(u)) in_use.insert(u);
  const uint64_t freed = *in_use.begin();
  ASSERT_TRUE(again.free(freed).is_ok());
  for (uint64_t n = f - in_use.size() + 1; n > 0; --n) {
    auto u = again.allocate();
    ASSERT_TRUE(u.is_ok());
    EXPECT_NE(*u, freed);
  }
  EXPECT_EQ(again.frontier(), f + 1);
}

// After a reopen the frontier is one past the highest unit in use, found
// from the bitmaps word by word: low bits of a word count too (a review
// found them skipped), and a full bitmap is read without running past it.
TEST(SpaceMap, FrontierAfterReopenIsTheHighestUnitInUse) {
  MemoryDevice dev(256 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 4096)).is_ok());
  auto tm = testing::open_tm(dev);
  for (uint64_t i = 0; i <= 70; ++i) ASSERT_EQ(*tm->data_space().allocate(), i);
  ASSERT_TRUE(tm->commit().is_ok());
  ASSERT_TRUE(tm->data_space().free(0).is_ok());
  ASSERT_TRUE(tm->commit().is_ok());
  tm = testing::open_tm(dev);
  EXPECT_EQ(*tm->data_space().allocate(), 0u);  // the hole below the frontier first
  EXPECT_EQ(tm->data_space().frontier(), 71u);
  // A whole bitmap in use and the next one's first unit: 32,513 units.
  const uint64_t units = kBitsPerBitmap + 1;
  ASSERT_GT(tm->data_space().total(), units);
  for (uint64_t i = 71; i < units; ++i) ASSERT_TRUE(tm->data_space().allocate().is_ok());
  ASSERT_TRUE(tm->commit().is_ok());
  ASSERT_TRUE(tm->data_space().free(kBitsPerBitmap).is_ok());  // the one in the second bitmap
  ASSERT_TRUE(tm->data_space().free(5).is_ok());
  ASSERT_TRUE(tm->commit().is_ok());
  tm = testing::open_tm(dev);
  EXPECT_EQ(*tm->data_space().allocate(), 5u);
  EXPECT_EQ(tm->data_space().frontier(), kBitsPerBitmap);
  EXPECT_EQ(*tm->data_space().allocate(), kBitsPerBitmap);  // nothing free below: the frontier moves
}

}  // namespace
}  // namespace multisnap
