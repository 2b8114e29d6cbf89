// One space (format 3): metadata borrows whole data chunks when its pool is
// full, gives them back when they empty, and a store runs out of metadata
// only when it runs out of space altogether. Both stores; check clean after
// every step; a format-2 store keeps opening with its fixed metadata area.
#include <gtest/gtest.h>

#include "meta/transaction.h"
#include "store/check_store.h"
#include "store/store_fixture.h"
#include "store/exception_store.h"
#include "store/store_format.h"
#include "support/memory_device.h"

namespace multisnap {
namespace {

class SharedSpaceTest : public testing::SpaceFixture {
 protected:
  void format(uint64_t device, uint64_t metadata, uint32_t version = kFormatVersion) {
    CreateOptions o;
    o.metadata_size = metadata;
    o.format_version = version;
    SpaceFixture::format(device, o);
  }
};

TEST_P(SharedSpaceTest, MetadataBorrowsDataChunksAndGivesThemBack) {
  format(64 << 20, 64 << 10);  // a 16-block pool
  std::vector<SnapshotInfo> snaps;
  for (int i = 0; i < 8; ++i) snaps.push_back(*store_->create_snapshot(std::nullopt, "s" + std::to_string(i), 1));
  for (uint64_t c = 0; c < 6000; ++c) {
    if (c % 4 == 0) {
      // Snapshot writes too: more exceptions per chunk, more metadata.
      ASSERT_TRUE(store_->make_chunk_writeable(c, snaps[c % 8]).is_ok());
    }
    ASSERT_TRUE(origin_write(c).is_ok()) << c;
    if (c % 500 == 499) {
      ASSERT_TRUE(store_->commit().is_ok());
    }
  }
  expect_clean("filled");
  StoreStats st = store_->stats();
  EXPECT_TRUE(st.shared_space);
  EXPECT_GT(st.meta_chunks_borrowed, 20u);
  EXPECT_GT(st.meta_blocks_used, st.meta_blocks_total);  // more metadata than the pool holds
  EXPECT_EQ(tm().data_space().used(), st.data_chunks_used + st.meta_chunks_borrowed);
  const uint64_t borrowed = st.meta_chunks_borrowed;

  reopen();  // the borrowed chunks are found again from the bitmaps alone
  EXPECT_EQ(store_->stats().meta_chunks_borrowed, borrowed);
  EXPECT_EQ(store_->stats().meta_blocks_used, st.meta_blocks_used);

  for (auto& s : snaps) ASSERT_TRUE(store_->delete_snapshot(s.id).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  reclaim_all();
  expect_clean("after reclaim");
  st = store_->stats();
  EXPECT_EQ(st.data_chunks_used, 0u);
  EXPECT_LT(st.meta_chunks_borrowed, borrowed / 4) << "emptied chunks go back to data";
  EXPECT_EQ(tm().data_space().used(), st.meta_chunks_borrowed);
  // What they gave back holds data again: a new snapshot can fill it.
  ASSERT_TRUE(store_->create_snapshot(std::nullopt, "again", 1).is_ok());
  for (uint64_t c = 0; c < 6000; ++c) ASSERT_TRUE(origin_write(c).is_ok()) << c;
  expect_clean("refilled");
}

// The store fills completely with snapshots and copies: every operation either
// completes or fails with kNoSpace having changed nothing, check stays clean,
// and after deletes and reclaim it accepts work again.
TEST_P(SharedSpaceTest, FillsCompletelyThenRecovers) {
  format(16 << 20, 64 << 10);
  std::vector<SnapshotInfo> snaps;
  uint64_t chunk = 0;
  Status last;
  int failures = 0;
  const int max_snaps = GetParam() == StoreFormat::kBitmask ? 60 : 100000;
  for (int round = 0; failures < 20 && round < 100000; ++round) {
    if (round % 7 == 0 && static_cast<int>(snaps.size()) < max_snaps) {
      auto s = store_->create_snapshot(std::nullopt, "snapshot-with-a-long-name-" + std::to_string(round), 1);
      if (s.is_ok()) snaps.push_back(*s);
      else {
        ASSERT_EQ(s.status().code(), Code::kNoSpace) << s.status().to_string();
        ++failures;
      }
    } else {
      Status w = origin_write(chunk);
      if (w.is_ok()) ++chunk;
      else {
        ASSERT_EQ(w.code(), Code::kNoSpace) << w.to_string();
        ++failures;
      }
    }
    ASSERT_TRUE(store_->tm().status().is_ok()) << "a full store must not fail";
    if (round % 50 == 0) {
      ASSERT_TRUE(store_->commit().is_ok());
    }
  }
  ASSERT_GE(failures, 20);
  expect_clean("full");
  EXPECT_GT(store_->stats().meta_chunks_borrowed, 0u);
  // Full means the whole store, but for the chunks kept back for deletes.
  // (plus what one update may need, and what the last transaction freed).
  EXPECT_LT(tm().room_blocks(), tm().delete_reserve_blocks() + 128);
  // Every preserved chunk is still there after a reopen.
  reopen();
  for (uint64_t c = 0; c < chunk && !snaps.empty(); c += 97)
    ASSERT_EQ(store_->lookup(c, snaps.front(), false)->kind, ChunkMapping::Kind::kStore) << c;
  // Delete most snapshots: reclaim frees their chunks, and the store works again.
  for (size_t i = 0; i + 1 < snaps.size(); ++i) ASSERT_TRUE(store_->delete_snapshot(snaps[i].id).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  reclaim_all();
  expect_clean("after reclaim");
  ASSERT_TRUE(store_->create_snapshot(std::nullopt, "after", 1).is_ok());
  for (uint64_t c = chunk; c < chunk + 50; ++c) ASSERT_TRUE(origin_write(c).is_ok()) << c;
  expect_clean("working again");
}

// check knows a borrowed block's owner: one allocated and never referenced is
// reported as a leak, by its block and chunk.
TEST_P(SharedSpaceTest, CheckFindsALeakedBorrowedBlock) {
  format(16 << 20, 64 << 10);
  ASSERT_TRUE(tm().reserve_meta(tm().meta_available() + 1).is_ok());  // borrows a chunk
  EXPECT_EQ(tm().borrowed_chunks(), 1u);
  // Fill the pool, then take one block in the borrowed chunk and drop it.
  std::vector<BlockRef> held;
  while (tm().meta_pool_used() < tm().layout().meta_blocks) held.push_back(*tm().new_block(BlockType::kBTreeNode));
  auto b = tm().new_block(BlockType::kBTreeNode);
  ASSERT_TRUE(b.is_ok());
  const uint64_t nr = b->blocknr();
  EXPECT_TRUE(tm().layout().in_data_area(nr));
  b = BlockRef();
  held.clear();
  ASSERT_TRUE(store_->commit().is_ok());
  store_.reset();
  bool leak = false;
  for (auto& p : testing::check_store(*dev_))
    leak |= p.find("metadata block " + std::to_string(nr)) != std::string::npos && p.find("leaked") != std::string::npos;
  EXPECT_TRUE(leak);
}

// A data chunk that an exception references and that also holds a metadata
// block in use is double use, whichever kind came first.
TEST_P(SharedSpaceTest, CheckFindsAChunkUsedAsDataAndMetadata) {
  format(16 << 20, 64 << 10);
  ASSERT_TRUE(store_->create_snapshot(std::nullopt, "s", 1).is_ok());
  store_->reset_query(7);
  ASSERT_TRUE(*store_->query_next_remap());
  CopyDescriptor d;
  const uint64_t chunk = *store_->add_next_remap(&d);
  ASSERT_TRUE(store_->commit().is_ok());
  for (auto& p : testing::check_store(*dev_)) ADD_FAILURE() << "before the damage: " << p;
  // The damage: a metadata bit set inside that data chunk.
  const Layout& l = tm().layout();
  const uint64_t block = l.data_start_block() + chunk * l.chunk_blocks();
  ASSERT_EQ(*tm().meta_space().allocate_in(block - l.meta_start, 1), block - l.meta_start);
  ASSERT_TRUE(tm().commit().is_ok());
  store_.reset();
  bool double_use = false;
  for (auto& p : testing::check_store(*dev_)) double_use |= p.find("double use") != std::string::npos;
  EXPECT_TRUE(double_use);
}

// An empty borrowed chunk (a reservation that was not used) is handed back at
// commit, so check finds no leak.
TEST_P(SharedSpaceTest, AnUnusedReservationIsHandedBack) {
  format(16 << 20, 64 << 10);
  ASSERT_TRUE(tm().reserve_meta(tm().meta_available() + 40).is_ok());
  EXPECT_GE(tm().borrowed_chunks(), 40u);
  ASSERT_TRUE(store_->create_snapshot(std::nullopt, "x", 1).is_ok());
  expect_clean("after the commit");
  EXPECT_EQ(tm().borrowed_chunks(), 0u);
  EXPECT_EQ(tm().data_space().used(), 0u);
}

// A format-2 store (fixed metadata area) still opens read-write, works, and
// runs out of metadata with a sentence saying why.
TEST_P(SharedSpaceTest, Version2StoreKeepsItsFixedMetadataArea) {
  format(128 << 20, 512 << 10, 2);
  EXPECT_EQ(tm().layout().version, 2u);
  EXPECT_FALSE(store_->stats().shared_space);
  std::vector<SnapshotInfo> snaps;
  for (int i = 0; i < 4; ++i) {
    auto s = store_->create_snapshot(std::nullopt, "", 1);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    snaps.push_back(*s);
  }
  Status w;
  for (uint64_t c = 0; w.is_ok(); ++c) w = origin_write(c);
  EXPECT_EQ(w.code(), Code::kNoSpace);
  EXPECT_NE(w.to_string().find("format-2"), std::string::npos) << w.to_string();
  EXPECT_EQ(tm().borrowed_chunks(), 0u);
  EXPECT_GT(tm().data_available(), 100u) << "data space left over: the metadata area ran out first";
  expect_clean("v2 full");
  reopen();
  EXPECT_EQ(tm().layout().version, 2u);
  expect_clean("v2 reopened");
}

INSTANTIATE_TEST_SUITE_P(Stores, SharedSpaceTest, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         [](const auto& info) { return std::string(store_format_name(info.param)); });

}  // namespace
}  // namespace multisnap
