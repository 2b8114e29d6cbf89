#include <gtest/gtest.h>

#include "support/memory_device.h"
#include "meta/meta_fixture.h"
#include "meta/superblock.h"

namespace multisnap {
namespace {

void expect_sane(const Layout& l) {
  EXPECT_EQ(l.commit_start, 1u);
  EXPECT_EQ(l.meta_bitmap_start, 1 + 2ull * kCommitCopies * l.commit_blocks);
  EXPECT_EQ(l.data_bitmap_start, l.meta_bitmap_start + 2ull * l.meta_bitmaps);
  EXPECT_EQ(l.meta_start, l.data_bitmap_start + 2ull * l.data_bitmaps);
  EXPECT_GE(l.data_start, (l.meta_start + l.meta_blocks) * kBlockSize);
  EXPECT_EQ(l.data_start % l.chunk_size, 0u);
  EXPECT_LE(l.data_start + l.data_chunks * l.chunk_size, l.store_size);
  EXPECT_GE(uint64_t{l.meta_bitmaps} * kBitsPerBitmap, l.meta_blocks);
  EXPECT_GE(uint64_t{l.data_bitmaps} * kBitsPerBitmap, l.data_chunks);
  EXPECT_GT(l.data_chunks, 0u);
}

TEST(Layout, FitsManySizes) {
  for (uint64_t store : {16ull << 20, 100ull << 20, 1ull << 30, 64ull << 30, 10ull << 40}) {
    for (uint32_t chunk : {4096u, 65536u, 1u << 20}) {
      LayoutRequest r{store, chunk, 1 << 30, std::nullopt};
      auto l = compute_layout(r);
      ASSERT_TRUE(l.is_ok()) << store << " " << chunk << ": " << l.status().to_string();
      expect_sane(*l);
      // Most of the store is data.
      if (store >= (1ull << 30)) {
        EXPECT_GT(double(l->data_chunks) * chunk, 0.9 * double(store)) << store << " " << chunk;
      }
    }
  }
}

TEST(Layout, LargeStoresNeedMultiBlockCommitRecords) {
  LayoutRequest r{100ull << 40, 4096, 1 << 30, std::nullopt};
  auto l = compute_layout(r);
  ASSERT_TRUE(l.is_ok());
  EXPECT_GT(l->commit_blocks, 1u);
  expect_sane(*l);
}

TEST(Layout, RejectsBadInput) {
  EXPECT_EQ(compute_layout({1 << 30, 3000, 1 << 20, std::nullopt}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(compute_layout({1 << 30, 2048, 1 << 20, std::nullopt}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(compute_layout({1 << 30, 2 << 20, 1 << 20, std::nullopt}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(compute_layout({1 << 30, 65536, 0, std::nullopt}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(compute_layout({1 << 20, 65536, 1 << 20, std::nullopt}).status().code(), Code::kNoSpace);
  // The pool may be as small as one block (metadata grows into data chunks), not smaller.
  EXPECT_EQ(compute_layout({1 << 30, 65536, 1 << 20, uint64_t{2048}}).status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(compute_layout({1 << 30, 65536, 1 << 20, uint64_t{4096}}).is_ok());
}

TEST(Superblock, RoundTripsAndDetectsDamage) {
  MemoryDevice dev(64 << 20);
  Superblock sb = testing::make_superblock(dev.size());
  ASSERT_TRUE(write_superblock(dev, sb).is_ok());
  EXPECT_TRUE(looks_like_store(dev));
  auto back = read_superblock(dev);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->origin_path, sb.origin_path);
  EXPECT_EQ(back->uuid, sb.uuid);
  EXPECT_EQ(back->layout.data_chunks, sb.layout.data_chunks);
  uint8_t junk = 0x77;
  dev.poke(200, &junk, 1);
  auto bad = read_superblock(dev);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kCorruption);
  EXPECT_NE(bad.status().message().find("checksum"), std::string::npos);
}

TEST(Superblock, RejectsAForeignDevice) {
  MemoryDevice dev(1 << 20);
  auto r = read_superblock(dev);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("not a multisnap store"), std::string::npos);
  EXPECT_FALSE(looks_like_store(dev));
}

}  // namespace
}  // namespace multisnap
