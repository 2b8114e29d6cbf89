#include "meta/cache.h"

#include <gtest/gtest.h>

#include "support/fault_device.h"
#include "support/memory_device.h"

namespace multisnap {
namespace {

constexpr uint64_t kSeed = 1234;

BlockRef make(BlockCache& c, uint64_t nr, uint8_t fill) {
  auto r = c.create(nr);
  EXPECT_TRUE(r.is_ok());
  uint8_t* d = r->mutable_data();
  auto* h = block_header(d);
  h->type = static_cast<uint32_t>(BlockType::kBitmap);
  h->blocknr = nr;
  h->generation = 1;
  std::memset(d + sizeof(BlockHeaderDisk), fill, kBlockPayload);
  return std::move(r).value();
}

TEST(BlockCache, StaysWithinCapacityAndWritesBackDirtyBlocks) {
  MemoryDevice dev(16 << 20);
  BlockCache cache(dev, 16 * kBlockSize, kSeed);
  for (uint64_t i = 0; i < 100; ++i) make(cache, i, static_cast<uint8_t>(i));
  EXPECT_LE(cache.stats().blocks, 16u);
  EXPECT_GT(cache.stats().writebacks, 0u);
  ASSERT_TRUE(cache.write_dirty().is_ok());
  for (uint64_t i = 0; i < 100; ++i) {
    auto r = cache.read(i, BlockType::kBitmap, 1);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->data()[100], static_cast<uint8_t>(i));
  }
  EXPECT_LE(cache.stats().blocks, 16u);
}

TEST(BlockCache, PinnedBlocksAreNeverEvicted) {
  MemoryDevice dev(16 << 20);
  BlockCache cache(dev, 16 * kBlockSize, kSeed);
  std::vector<BlockRef> pinned;
  for (uint64_t i = 0; i < 20; ++i) pinned.push_back(make(cache, i, 1));
  EXPECT_EQ(cache.stats().blocks, 20u);  // over budget only by what is pinned
  pinned.clear();
  make(cache, 100, 1);
  EXPECT_LE(cache.stats().blocks, 16u);
}

TEST(BlockCache, DetectsEveryKindOfBadBlock) {
  MemoryDevice dev(16 << 20);
  {
    BlockCache cache(dev, 1 << 20, kSeed);
    make(cache, 5, 9);
    make(cache, 6, 9);
    ASSERT_TRUE(cache.write_dirty().is_ok());
  }
  BlockCache cache(dev, 1 << 20, kSeed);
  // Flip a payload byte: checksum.
  uint8_t x = 0;
  dev.poke(5 * kBlockSize + 1000, &x, 1);
  auto r = cache.read(5, BlockType::kBitmap, 1);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("checksum"), std::string::npos);
  // Block 6 copied to block 7: misdirected.
  std::vector<uint8_t> b6(kBlockSize);
  ASSERT_TRUE(dev.read(6 * kBlockSize, b6.data(), kBlockSize).is_ok());
  dev.poke(7 * kBlockSize, b6.data(), kBlockSize);
  r = cache.read(7, BlockType::kBitmap, 1);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("says it is block 6"), std::string::npos);
  // Wrong type, newer generation, other store's seed.
  EXPECT_FALSE(cache.read(6, BlockType::kBTreeNode, 1).is_ok());
  BlockCache fresh(dev, 1 << 20, kSeed);
  EXPECT_NE(fresh.read(6, BlockType::kBitmap, 0).status().message().find("generation"), std::string::npos);
  BlockCache other(dev, 1 << 20, kSeed + 1);
  EXPECT_FALSE(other.read(6, BlockType::kBitmap, 1).is_ok());
  EXPECT_TRUE(fresh.read(6, BlockType::kBitmap, 1).is_ok());
}

TEST(BlockCache, ReadErrorsPropagate) {
  MemoryDevice mem(16 << 20);
  FaultDevice dev(mem);
  BlockCache cache(dev, 1 << 20, kSeed);
  FaultRule rule;
  rule.op = FaultOp::kRead;
  dev.add_rule(rule);
  auto r = cache.read(3, BlockType::kBitmap, 1);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kIoError);
  EXPECT_FALSE(cache.contains(3));
}

}  // namespace
}  // namespace multisnap
