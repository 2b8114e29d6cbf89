// The bitmask store on its own (no engine): one copy per origin write, the
// 64-snapshot limit, bits reused only after their sweep committed, zeroing,
// and check.
#include "store/bitmask/bitmask_store.h"

#include <gtest/gtest.h>

#include "support/memory_device.h"
#include "store/store_fixture.h"

namespace multisnap {
namespace {

class BitmaskStoreTest : public testing::StoreFixture {
 protected:
  void SetUp() override { format(StoreFormat::kBitmask); }
};

TEST_F(BitmaskStoreTest, OneCopyWhateverTheHistory) {
  std::vector<SnapshotInfo> s;
  for (int i = 0; i < 8; ++i) s.push_back(snap());
  for (int i : {1, 3, 5}) {
    auto plan = store_->make_chunk_writeable(7, s[i]);
    ASSERT_TRUE(plan.is_ok());
    EXPECT_EQ(plan->source, CopyPlan::Source::kOrigin);
  }
  EXPECT_EQ(origin_write(7).size(), 1u);  // one exception for snapshots 0, 2, 4, 6, 7
  EXPECT_EQ(origin_write(7).size(), 0u);
  uint64_t shared = map(7, s[0]).store_chunk;
  for (int i : {0, 2, 4, 6, 7}) {
    EXPECT_EQ(map(7, s[i]).store_chunk, shared);
    EXPECT_FALSE(map(7, s[i]).exclusive);
  }
  for (int i : {1, 3, 5}) EXPECT_TRUE(map(7, s[i]).exclusive);
  // A write to a sharer takes its bit out and copies from the shared chunk.
  auto plan = store_->make_chunk_writeable(7, s[2]);
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->source, CopyPlan::Source::kStore);
  EXPECT_EQ(plan->source_chunk, shared);
  ASSERT_EQ(plan->dests.size(), 1u);
  EXPECT_TRUE(store_->conflicts(plan->descriptor, s[0]));
  EXPECT_FALSE(store_->conflicts(plan->descriptor, s[1]));
  EXPECT_TRUE(map(7, s[2]).exclusive);
  EXPECT_EQ(map(7, s[0]).store_chunk, shared);
  expect_clean();
}

TEST_F(BitmaskStoreTest, SixtyFourSnapshotsAtMostAndBitsComeBackAfterTheSweep) {
  std::vector<SnapshotInfo> s;
  for (int i = 0; i < 64; ++i) s.push_back(snap());
  EXPECT_EQ(store_->stats().snapshot_slots_free, 0u);
  auto refused = store_->create_snapshot(std::nullopt, "", 1);
  ASSERT_EQ(refused.status().code(), Code::kNoSpace);
  EXPECT_NE(refused.status().message().find("at most 64"), std::string::npos);
  // Snapshot 5 has data of its own; deleting it frees its bit only after the sweep.
  ASSERT_TRUE(store_->make_chunk_writeable(3, s[5]).is_ok());
  EXPECT_EQ(origin_write(3).size(), 1u);
  ASSERT_TRUE(store_->delete_snapshot(s[5].id).is_ok());
  auto still = store_->create_snapshot(std::nullopt, "", 1);
  EXPECT_EQ(still.status().code(), Code::kNoSpace);
  EXPECT_NE(still.status().message().find("being reclaimed"), std::string::npos);
  ASSERT_TRUE(store_->commit().is_ok());
  reopen();  // the sweep survives a restart
  EXPECT_TRUE(store_->reclaim_pending());
  reclaim_all();
  EXPECT_EQ(store_->stats().snapshot_slots_free, 1u);
  SnapshotInfo fresh = snap();
  EXPECT_EQ(fresh.store_key, s[5].store_key);  // the bit is reused...
  EXPECT_EQ(map(3, fresh).kind, ChunkMapping::Kind::kOrigin);  // ...without the old data
  expect_clean();
}

TEST_F(BitmaskStoreTest, SnapshotsOfSnapshotsAreRefused) {
  SnapshotInfo a = snap();
  auto r = store_->create_snapshot(a.id, "", 1);
  ASSERT_EQ(r.status().code(), Code::kNotSupported);
  EXPECT_NE(r.status().message().find("range"), std::string::npos);
}

TEST_F(BitmaskStoreTest, ZeroingNeverCopies) {
  SnapshotInfo a = snap(), b = snap();
  EXPECT_EQ(origin_write(1).size(), 1u);  // {a, b} share one chunk
  uint64_t used = store_->stats().data_chunks_used;
  auto z = store_->zero_chunk(1, a);
  ASSERT_TRUE(z->dests.empty());
  EXPECT_TRUE(store_->conflicts(z->descriptor, b));  // b now owns the chunk alone: it waits for the commit
  EXPECT_EQ(map(1, a).kind, ChunkMapping::Kind::kZero);
  EXPECT_EQ(map(1, b).kind, ChunkMapping::Kind::kStore);
  EXPECT_TRUE(map(1, b).exclusive);
  ASSERT_TRUE(store_->zero_chunk(1, b)->dests.empty());
  EXPECT_EQ(store_->stats().data_chunks_used, used - 1);  // nobody left on it
  EXPECT_EQ(map(1, a).kind, ChunkMapping::Kind::kZero);
  // An unremapped chunk zeroed for a: origin writes preserve it for b only.
  ASSERT_TRUE(store_->zero_chunk(2, a)->dests.empty());
  EXPECT_EQ(origin_write(2).size(), 1u);
  EXPECT_TRUE(map(2, b).exclusive);
  // A partial write to a's zero chunk: a chunk filled with zeros.
  auto plan = store_->make_chunk_writeable(2, a);
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->source, CopyPlan::Source::kZero);
  EXPECT_TRUE(map(2, a).exclusive);
  EXPECT_EQ(map(2, a).kind, ChunkMapping::Kind::kStore);
  expect_clean();
}

TEST_F(BitmaskStoreTest, DeleteFreesWhatOnlyItUsed) {
  SnapshotInfo a = snap(), b = snap();
  for (uint64_t c = 0; c < 500; ++c) EXPECT_EQ(origin_write(c).size(), 1u);
  for (uint64_t c = 0; c < 100; ++c) ASSERT_TRUE(store_->make_chunk_writeable(c, b).is_ok());
  EXPECT_EQ(store_->stats().data_chunks_used, 600u);
  ASSERT_TRUE(store_->delete_snapshot(b.id).is_ok());
  reclaim_all();
  EXPECT_EQ(store_->stats().data_chunks_used, 500u);
  EXPECT_EQ(store_->stats().exceptions, 500u);
  ASSERT_TRUE(store_->delete_snapshot(a.id).is_ok());
  reclaim_all();
  EXPECT_EQ(store_->stats().data_chunks_used, 0u);
  EXPECT_EQ(store_->stats().snapshot_slots_free, 64u);
  expect_clean();
}

TEST_F(BitmaskStoreTest, CheckFindsABitInTwoExceptions) {
  SnapshotInfo a = snap();
  EXPECT_EQ(origin_write(4).size(), 1u);
  ASSERT_TRUE(store_->commit().is_ok());
  {
    auto report = testing::check_report(dev_);
    ASSERT_TRUE(report.is_ok()) << report.status().to_string();
    EXPECT_TRUE(report->clean());
  }
  // Forge a second exception holding a's bit for the same chunk.
  uint64_t extra = *store_->tm().allocate_chunk();
  BTree<BitmaskExceptionTraits> tree(store_->tm(), load_le<uint64_t>(store_->tm().store_area().data() + 64));
  ASSERT_TRUE(tree.insert({4, extra}, {uint64_t{1} << a.store_key}).is_ok());
  store_le(store_->tm().mutable_store_area().data() + 64, tree.root());
  ASSERT_TRUE(store_->tm().commit().is_ok());
  auto report = testing::check_report(dev_);
  ASSERT_TRUE(report.is_ok()) << report.status().to_string();
  bool saw = false;
  for (auto& p : report->problems()) saw |= p.find("two exceptions") != std::string::npos;
  EXPECT_TRUE(saw);
}

}  // namespace
}  // namespace multisnap
