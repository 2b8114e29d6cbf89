// The range store on its own (no engine): the seed's example, snapshots of
// snapshots, zeroing, delete and reclaim, and check.
#include "store/range/range_store.h"

#include <gtest/gtest.h>

#include "support/memory_device.h"
#include "store/store_fixture.h"

namespace multisnap {
namespace {

class RangeStoreTest : public testing::StoreFixture {
 protected:
  void SetUp() override { format(StoreFormat::kRange); }
};

TEST_F(RangeStoreTest, SeedExampleWithoutSnapshotWriteMakesOneCopy) {
  snap(); snap(); snap();
  auto dests = origin_write(7);
  ASSERT_EQ(dests.size(), 1u);
  auto d = dump();
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].snapshots, "1..3");
  EXPECT_EQ(d[0].live, (std::vector<SnapshotId>{1, 2, 3}));
  EXPECT_TRUE(origin_write(7).empty());  // nothing left to preserve
  expect_clean();
}

TEST_F(RangeStoreTest, SeedExampleWithSnapshotWriteMakesTwoCopies) {
  snap();
  SnapshotInfo s2 = snap();
  snap();
  auto plan = store_->make_chunk_writeable(7, s2);
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->source, CopyPlan::Source::kOrigin);
  ASSERT_EQ(plan->dests.size(), 1u);
  auto dests = origin_write(7);
  EXPECT_EQ(dests.size(), 2u);
  auto d = dump();
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].snapshots, "1..1");
  EXPECT_EQ(d[1].snapshots, "2..2");
  EXPECT_EQ(d[2].snapshots, "3..3");
  EXPECT_TRUE(map(7, s2).exclusive);
  expect_clean();
}

TEST_F(RangeStoreTest, NewSnapshotsDoNotInheritOldRemaps) {
  SnapshotInfo s1 = snap();
  ASSERT_EQ(origin_write(3).size(), 1u);
  SnapshotInfo s2 = snap();
  EXPECT_EQ(map(3, s1).kind, ChunkMapping::Kind::kStore);
  EXPECT_EQ(map(3, s2).kind, ChunkMapping::Kind::kOrigin);
  EXPECT_EQ(origin_write(3).size(), 1u);  // now for snapshot 2 only
  EXPECT_NE(map(3, s1).store_chunk, map(3, s2).store_chunk);
  expect_clean();
}

TEST_F(RangeStoreTest, SharedEntryCarvedForAMiddleSnapshotWrite) {
  snap();
  SnapshotInfo s2 = snap();
  SnapshotInfo s3 = snap();
  origin_write(5);  // [1..3] -> D
  uint64_t d = map(5, s2).store_chunk;
  EXPECT_FALSE(map(5, s2).exclusive);
  auto plan = store_->make_chunk_writeable(5, s2);
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->source, CopyPlan::Source::kStore);
  EXPECT_EQ(plan->source_chunk, d);
  ASSERT_EQ(plan->dests.size(), 2u);  // 2's own copy, and one for 3 (1 keeps D)
  EXPECT_TRUE(store_->conflicts(plan->descriptor, s3));
  EXPECT_TRUE(map(5, s2).exclusive);
  EXPECT_EQ(map(5, s2).store_chunk, plan->dests[0]);
  EXPECT_EQ(map(5, s3).store_chunk, plan->dests[1]);
  auto e = dump();
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].store_chunk, d);
  expect_clean();
}

TEST_F(RangeStoreTest, SnapshotOfSnapshotSharesThenDiverges) {
  SnapshotInfo s1 = snap();
  origin_write(9);
  uint64_t d = map(9, s1).store_chunk;
  SnapshotInfo child = snap(s1.id);
  EXPECT_EQ(child.parent, s1.id);
  EXPECT_EQ(map(9, child).store_chunk, d);
  EXPECT_FALSE(map(9, s1).exclusive);
  // The parent writes: it gets its own chunk, the child keeps D.
  auto plan = store_->make_chunk_writeable(9, fresh(s1));
  ASSERT_TRUE(plan.is_ok());
  ASSERT_EQ(plan->dests.size(), 1u);
  EXPECT_EQ(map(9, child).store_chunk, d);
  EXPECT_EQ(map(9, s1).store_chunk, plan->dests[0]);
  EXPECT_TRUE(map(9, s1).exclusive);
  // A second child sees the parent's new data, not the old.
  SnapshotInfo child2 = snap(s1.id);
  EXPECT_EQ(map(9, child2).store_chunk, plan->dests[0]);
  // Chunks the parent never had remapped are on the origin for the children too.
  EXPECT_EQ(map(10, child2).kind, ChunkMapping::Kind::kOrigin);
  EXPECT_EQ(origin_write(10).size(), 1u);  // one copy serves 1 and both children
  EXPECT_EQ(map(10, child2).store_chunk, map(10, s1).store_chunk);
  // One level only.
  auto deeper = store_->create_snapshot(child.id, "", 1);
  EXPECT_EQ(deeper.status().code(), Code::kNotSupported);
  expect_clean();
}

TEST_F(RangeStoreTest, ChildWriteSplitsFromParent) {
  SnapshotInfo s1 = snap();
  SnapshotInfo child = snap(s1.id);
  auto plan = store_->make_chunk_writeable(4, child);
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->source, CopyPlan::Source::kOrigin);
  EXPECT_EQ(map(4, s1).kind, ChunkMapping::Kind::kOrigin);
  EXPECT_TRUE(map(4, child).exclusive);
  // An origin write now preserves the chunk for the parent (and its future children) only.
  EXPECT_EQ(origin_write(4).size(), 1u);
  EXPECT_TRUE(map(4, fresh(s1)).exclusive);
  expect_clean();
}

TEST_F(RangeStoreTest, ZeroChunkVariants) {
  SnapshotInfo s1 = snap();
  SnapshotInfo s2 = snap();
  // Unremapped: a zero entry, no copy, and the origin write skips it.
  ASSERT_TRUE(store_->zero_chunk(1, s1)->dests.empty());
  EXPECT_EQ(map(1, s1).kind, ChunkMapping::Kind::kZero);
  EXPECT_EQ(origin_write(1).size(), 1u);  // for snapshot 2 only
  // Exclusive real chunk: freed.
  uint64_t used = store_->stats().data_chunks_used;
  auto freed = store_->zero_chunk(1, s2);
  ASSERT_TRUE(freed->dests.empty());
  EXPECT_TRUE(store_->conflicts(freed->descriptor, s2));
  EXPECT_EQ(store_->stats().data_chunks_used, used - 1);
  // A partial write to a zero chunk needs a chunk filled with zeros.
  auto plan = store_->make_chunk_writeable(1, s2);
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->source, CopyPlan::Source::kZero);
  EXPECT_EQ(plan->dests.size(), 1u);
  // Shared entry with both sides live: the right side needs a copy.
  SnapshotInfo s3 = snap();
  origin_write(2);  // [1..3]
  auto z = store_->zero_chunk(2, s2);
  ASSERT_TRUE(z.is_ok());
  ASSERT_EQ(z->dests.size(), 1u);
  EXPECT_EQ(map(2, s2).kind, ChunkMapping::Kind::kZero);
  EXPECT_EQ(map(2, s3).store_chunk, z->dests[0]);
  // Every sharer must wait for the change to be committed.
  EXPECT_TRUE(store_->conflicts(z->descriptor, s1));
  EXPECT_TRUE(store_->conflicts(z->descriptor, s3));
  expect_clean();
}

TEST_F(RangeStoreTest, DeleteReclaimsInTheBackgroundAndResumesAfterReopen) {
  SnapshotInfo a = snap(std::nullopt, "a");
  SnapshotInfo b = snap(std::nullopt, "b");
  for (uint64_t c = 0; c < 3000; ++c) origin_write(c);  // 3000 entries [1..2]
  for (uint64_t c = 0; c < 100; ++c) ASSERT_TRUE(store_->make_chunk_writeable(c, b).is_ok());
  EXPECT_EQ(store_->stats().exceptions, 3100u);
  ASSERT_TRUE(store_->commit().is_ok());
  ASSERT_TRUE(store_->delete_snapshot(b.id).is_ok());
  EXPECT_FALSE(store_->find_snapshot(b.id)->has_value());
  EXPECT_FALSE(store_->find_snapshot("b")->has_value());
  EXPECT_TRUE(store_->reclaim_pending());
  // b's 100 private chunks go; the shared ones stay for a.
  while (store_->reclaim_pending()) {
    ASSERT_TRUE(store_->reclaim_step(500).is_ok());
    ASSERT_TRUE(store_->commit().is_ok());
  }
  EXPECT_EQ(store_->stats().exceptions, 3000u);
  expect_clean();
  ASSERT_TRUE(store_->delete_snapshot(a.id).is_ok());
  ASSERT_TRUE(store_->reclaim_step(1000).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  reopen();  // the cursor survives
  EXPECT_TRUE(store_->reclaim_pending());
  EXPECT_GT(store_->stats().reclaim_progress, 0.0);
  int steps = 0;
  while (store_->reclaim_pending()) {
    ASSERT_TRUE(store_->reclaim_step(1000).is_ok());
    ASSERT_TRUE(store_->commit().is_ok());
    ++steps;
  }
  EXPECT_LE(steps, 3);
  EXPECT_EQ(store_->stats().exceptions, 0u);
  EXPECT_EQ(store_->stats().data_chunks_used, 0u);
  expect_clean();
}

TEST_F(RangeStoreTest, DeleteDuringAPassAsksForAnotherPass) {
  SnapshotInfo a = snap();
  SnapshotInfo b = snap();
  SnapshotInfo c = snap();
  for (uint64_t ch = 0; ch < 50; ++ch) {
    ASSERT_TRUE(store_->make_chunk_writeable(ch, a).is_ok());
    ASSERT_TRUE(store_->make_chunk_writeable(ch, b).is_ok());
  }
  ASSERT_TRUE(store_->delete_snapshot(c.id).is_ok());
  ASSERT_TRUE(store_->reclaim_step(60).is_ok());  // past a's and b's first 30 chunks
  ASSERT_TRUE(store_->delete_snapshot(a.id).is_ok());
  while (store_->reclaim_pending()) ASSERT_TRUE(store_->reclaim_step(60).is_ok());
  EXPECT_EQ(store_->stats().exceptions, 50u);  // only b's
  expect_clean();
}

TEST_F(RangeStoreTest, NamesAreUniqueAndValidated) {
  snap(std::nullopt, "nightly-2026.11.21");
  auto dup = store_->create_snapshot(std::nullopt, "nightly-2026.11.21", 1);
  EXPECT_EQ(dup.status().code(), Code::kExists);
  for (const char* bad : {"12", "has space", "", "x/y", "a\nb"}) {
    if (!*bad) continue;
    EXPECT_EQ(store_->create_snapshot(std::nullopt, bad, 1).status().code(), Code::kInvalidArgument) << bad;
  }
  EXPECT_EQ(store_->create_snapshot(std::nullopt, std::string(65, 'a'), 1).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(store_->create_snapshot(99, "", 1).status().code(), Code::kNotFound);
  auto found = store_->find_snapshot("nightly-2026.11.21");
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->id, 1u);
}

TEST_F(RangeStoreTest, ManySnapshotsListInOrderAndSurviveReopen) {
  for (int i = 0; i < 3000; ++i) snap(std::nullopt, i % 2 ? "s" + std::to_string(i) : "");
  for (SnapshotId id = 2; id <= 3000; id += 7) ASSERT_TRUE(store_->delete_snapshot(id).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  reopen();
  std::vector<SnapshotId> ids;
  ASSERT_TRUE(store_->list_snapshots(0, [&](const SnapshotInfo& s) { ids.push_back(s.id); return true; }).is_ok());
  EXPECT_EQ(ids.size(), store_->snapshot_count());
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(ids.size(), 3000u - 429u);
  EXPECT_TRUE(store_->find_snapshot("s2999")->has_value());
  expect_clean();
}

TEST_F(RangeStoreTest, CheckFindsADamagedNodeAndALeak) {
  snap();
  for (uint64_t c = 0; c < 2000; ++c) origin_write(c);
  ASSERT_TRUE(store_->commit().is_ok());
  // Leak: allocate a chunk nobody references, commit.
  ASSERT_TRUE(store_->tm().allocate_chunk().is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  {
    auto problems = testing::check_store(dev_);
    ASSERT_FALSE(problems.empty());
    EXPECT_NE(problems[0].find("leaked"), std::string::npos) << problems[0];
  }
  // Damage: overwrite a metadata block in the middle of the exception tree.
  const Layout& l = store_->layout();
  std::vector<uint8_t> junk(kBlockSize, 0xab);
  dev_.poke((l.meta_start + 10) * kBlockSize, junk.data(), junk.size());
  bool saw = false;
  for (auto& p : testing::check_store(dev_)) saw |= p.find("checksum") != std::string::npos;
  EXPECT_TRUE(saw);
}

// Metadata running out in the middle of a transaction must never leave a
// half-done update to be committed: either the update is refused before it
// changes anything, or the store fails and reopens as it was. Format 2: the
// fixed metadata area runs out; format 3: the whole store does (a tiny pool,
// so the metadata lives mostly in borrowed data chunks).
class RangeStoreMetadata : public ::testing::TestWithParam<uint32_t> {};

TEST_P(RangeStoreMetadata, RunningOutMidTransactionNeverCommitsHalfAnUpdate) {
  const bool v2 = GetParam() == 2;
  MemoryDevice dev(v2 ? 512ull << 20 : 48ull << 20);
  CreateOptions o;
  o.chunk_size = 4096;
  o.origin_size = 1ull << 30;
  o.metadata_size = v2 ? 2 << 20 : 64 << 10;
  o.format_version = GetParam();
  ASSERT_TRUE(format_store(dev, o).is_ok());
  auto st = std::move(open_store(dev, {})).value();
  TransactionManager& tm = st->tm();
  SnapshotInfo s[3];
  for (auto& x : s) x = *st->create_snapshot(std::nullopt, "", 1);
  uint64_t chunks = 0;
  auto room = [&] { return v2 ? tm.meta_available() : tm.room_blocks() - tm.delete_reserve_blocks(); };
  for (; room() > 200; ++chunks) {  // [1..3] entries
    st->reset_query(chunks);
    ASSERT_TRUE(*st->query_next_remap());
    CopyDescriptor d;
    auto added = st->add_next_remap(&d);
    ASSERT_TRUE(added.is_ok()) << added.status().to_string();
    if (chunks % 500 == 499) {
      ASSERT_TRUE(st->commit().is_ok());
    }
  }
  ASSERT_TRUE(st->commit().is_ok());
  if (!v2) {
    EXPECT_GT(tm.borrowed_chunks(), 10u);
  }
  std::vector<uint64_t> before(chunks);
  for (uint64_t c = 0; c < chunks; ++c) before[c] = st->lookup(c, s[0], false)->store_chunk;
  // Snapshot 2 writes everywhere, in one transaction, until something gives.
  Status failure;
  for (uint64_t c = 0; c < chunks && failure.is_ok(); c += 3) failure = st->make_chunk_writeable(c, s[1]).status();
  ASSERT_FALSE(failure.is_ok());
  EXPECT_EQ(failure.code(), Code::kNoSpace) << failure.to_string();
  Status committed = st->commit();
  EXPECT_TRUE(committed.is_ok() || committed.code() == Code::kFailed) << committed.to_string();
  st.reset();
  EXPECT_TRUE(testing::check_store(dev).empty());
  auto again = std::move(open_store(dev, {})).value();
  for (uint64_t c = 0; c < chunks; ++c) {
    auto m1 = *again->lookup(c, **again->find_snapshot(s[0].id), false);
    auto m3 = *again->lookup(c, **again->find_snapshot(s[2].id), false);
    ASSERT_EQ(m1.kind, ChunkMapping::Kind::kStore) << "chunk " << c;
    ASSERT_EQ(m3.kind, ChunkMapping::Kind::kStore) << "chunk " << c << ": snapshot 3 lost its preserved data";
    ASSERT_EQ(m1.store_chunk, before[c]);
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, RangeStoreMetadata, ::testing::Values(2u, 3u, 4u),
                         [](const auto& info) { return "v" + std::to_string(info.param); });

TEST_F(RangeStoreTest, FullStoreIsACleanError) {
  snap();
  uint64_t total = store_->stats().data_chunks_total;
  for (uint64_t c = 0; c < total; ++c) ASSERT_EQ(origin_write(c).size(), 1u);
  store_->reset_query(total);
  ASSERT_TRUE(*store_->query_next_remap());
  CopyDescriptor d;
  auto r = store_->add_next_remap(&d);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kNoSpace);
  expect_clean();
}

}  // namespace
}  // namespace multisnap
