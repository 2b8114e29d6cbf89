// Space use per snapshot (ExceptionStore::start_space_scan), for both
// stores, after random histories: each snapshot's exclusive chunks are
// exactly what deleting it alone frees once reclaim has run (measured on a
// copy of the store image), and its shared chunks match a brute-force count
// through lookup() over every chunk and snapshot.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <set>

#include "store/store_fixture.h"

namespace multisnap {
namespace {

// MULTISNAP_SOAK=n runs n times more histories.
int soak_factor() {
  const char* v = std::getenv("MULTISNAP_SOAK");
  int n = v ? std::atoi(v) : 1;
  return n > 0 ? n : 1;
}

class SpaceTest : public testing::StoreFixture, public ::testing::WithParamInterface<StoreFormat> {
 protected:
  static constexpr uint64_t kChunks = 48;  // few chunks: lots of sharing and splitting

  void SetUp() override { format(GetParam()); }
  bool range() const { return GetParam() == StoreFormat::kRange; }

  std::vector<SnapshotInfo> live() {
    std::vector<SnapshotInfo> out;
    EXPECT_TRUE(store_->list_snapshots(0, [&](const SnapshotInfo& s) {
      out.push_back(s);
      return true;
    }).is_ok());
    return out;
  }

  // One random step of a history: what the engine would ask of the store.
  void random_op(std::mt19937_64& rng) {
    std::vector<SnapshotInfo> snaps = live();
    auto pick = [&]() -> const SnapshotInfo& { return snaps[rng() % snaps.size()]; };
    const uint64_t c = rng() % kChunks;
    const int op = static_cast<int>(rng() % 100);
    const size_t max_live = range() ? 14 : 10;
    if (snaps.empty() || (op < 12 && snaps.size() < max_live)) {
      std::optional<SnapshotId> parent;
      // Snapshots of snapshots (one level deep) on the range store.
      if (range() && !snaps.empty() && rng() % 3 == 0) {
        const SnapshotInfo& p = pick();
        if (p.parent == kOriginId) parent = p.id;
      }
      snap(parent);
    } else if (op < 45) {
      origin_write(c);
    } else if (op < 48) {
      // A hole of the origin: zero remaps, which use no chunk.
      store_->reset_query(c);
      while (*store_->query_next_remap()) {
        CopyDescriptor d;
        ASSERT_TRUE(store_->add_next_remap(&d, true).is_ok());
      }
    } else if (op < 75) {
      ASSERT_TRUE(store_->make_chunk_writeable(c, fresh(pick())).is_ok());
    } else if (op < 85) {
      ASSERT_TRUE(store_->zero_chunk(c, fresh(pick())).is_ok());
    } else if (op < 92 && snaps.size() > 1) {
      ASSERT_TRUE(store_->delete_snapshot(pick().id).is_ok());
      // Sometimes only part of the reclaim runs.
      if (rng() % 2) {
        reclaim_all();
      } else if (store_->reclaim_pending()) {
        ASSERT_TRUE(store_->reclaim_step(1 + rng() % 8).is_ok());
      }
    } else {
      ASSERT_TRUE(store_->commit().is_ok());
    }
  }

  // The figures, computed in random small steps (resuming from the cursor).
  std::vector<SnapshotSpace> space_in_steps(std::mt19937_64& rng, uint64_t* unreferenced) {
    auto scan = store_->start_space_scan();
    EXPECT_TRUE(scan.is_ok());
    if (!scan.is_ok()) return {};
    for (;;) {
      auto done = (*scan)->step(1 + rng() % 7);
      EXPECT_TRUE(done.is_ok());
      if (!done.is_ok() || *done) break;
    }
    EXPECT_EQ((*scan)->visited(), store_->stats().exceptions);
    EXPECT_FALSE((*scan)->snapshots_changed());
    *unreferenced = (*scan)->unreferenced_chunks();
    return (*scan)->result();
  }

  // Data chunks in use after deleting only `id` and reclaiming to the end,
  // on a copy of the committed store image.
  uint64_t used_after_deleting(SnapshotId id) {
    EXPECT_TRUE(store_->commit().is_ok());
    MemoryDevice copy(dev_.size());
    auto extents = dev_.allocation(0, dev_.size());
    EXPECT_TRUE(extents.is_ok());
    std::vector<uint8_t> buf;
    uint64_t pos = 0;
    for (const auto& e : *extents) {
      if (!e.hole) {
        buf.resize(e.length);
        EXPECT_TRUE(dev_.read(pos, buf.data(), e.length).is_ok());
        EXPECT_TRUE(copy.write(pos, buf.data(), e.length).is_ok());
      }
      pos += e.length;
    }
    auto other = open_store(copy, {});
    EXPECT_TRUE(other.is_ok());
    if (!other.is_ok()) return 0;
    ExceptionStore& st = **other;
    EXPECT_TRUE(st.delete_snapshot(id).is_ok());
    while (st.reclaim_pending()) {
      EXPECT_TRUE(st.reclaim_step(1000).is_ok());
      EXPECT_TRUE(st.commit().is_ok());
    }
    return st.stats().data_chunks_used;
  }

  void check_history(uint64_t seed, int ops) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    for (int i = 0; i < ops && !HasFatalFailure(); ++i) random_op(rng);
    ASSERT_FALSE(HasFatalFailure());

    uint64_t unreferenced = 0;
    std::vector<SnapshotSpace> space = space_in_steps(rng, &unreferenced);
    auto whole = store_->space_use();
    ASSERT_TRUE(whole.is_ok());
    std::vector<SnapshotInfo> snaps = live();
    ASSERT_EQ(space.size(), snaps.size());
    ASSERT_EQ(whole->size(), snaps.size());

    // Brute force: every (chunk, snapshot) through lookup().
    std::map<SnapshotId, std::pair<uint64_t, uint64_t>> brute;  // exclusive, shared
    std::set<uint64_t> read_chunks;
    for (uint64_t c = 0; c < kChunks; ++c) {
      for (const SnapshotInfo& s : snaps) {
        ChunkMapping m = map(c, fresh(s));
        if (m.kind != ChunkMapping::Kind::kStore) continue;
        read_chunks.insert(m.store_chunk);
        if (m.exclusive) ++brute[s.id].first;
        else ++brute[s.id].second;
      }
    }
    const uint64_t used = store_->stats().data_chunks_used;
    EXPECT_EQ(used, read_chunks.size() + unreferenced);

    for (size_t i = 0; i < snaps.size(); ++i) {
      SCOPED_TRACE("snapshot " + std::to_string(snaps[i].id));
      EXPECT_EQ(space[i].id, snaps[i].id);
      EXPECT_EQ(space[i].exclusive_chunks, (*whole)[i].exclusive_chunks);
      EXPECT_EQ(space[i].shared_chunks, (*whole)[i].shared_chunks);
      EXPECT_EQ(space[i].exclusive_chunks, brute[snaps[i].id].first);
      EXPECT_EQ(space[i].shared_chunks, brute[snaps[i].id].second);
      // Deleting it alone frees its exclusive chunks, and whatever a reclaim
      // still pending would have freed anyway.
      EXPECT_EQ(used - used_after_deleting(snaps[i].id), space[i].exclusive_chunks + unreferenced);
    }
    expect_clean();
  }
};

TEST_P(SpaceTest, EmptyStoreAndSnapshotsWithNothingCopied) {
  auto none = store_->space_use();
  ASSERT_TRUE(none.is_ok());
  EXPECT_TRUE(none->empty());
  SnapshotInfo a = snap(), b = snap();
  auto r = store_->space_use();
  ASSERT_TRUE(r.is_ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].id, a.id);
  EXPECT_EQ((*r)[1].id, b.id);
  for (const SnapshotSpace& s : *r) EXPECT_EQ(s.exclusive_chunks + s.shared_chunks, 0u);
}

TEST_P(SpaceTest, OneCopyForTwoIsSharedAWriteMakesItExclusive) {
  SnapshotInfo a = snap(), b = snap();
  origin_write(1);                                           // one chunk, read by a and b
  ASSERT_TRUE(store_->make_chunk_writeable(2, fresh(a)).is_ok());  // a's own
  ASSERT_TRUE(store_->zero_chunk(3, fresh(b)).is_ok());            // zeros: no space
  auto r = store_->space_use();
  ASSERT_TRUE(r.is_ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].exclusive_chunks, 1u);
  EXPECT_EQ((*r)[0].shared_chunks, 1u);
  EXPECT_EQ((*r)[1].exclusive_chunks, 0u);
  EXPECT_EQ((*r)[1].shared_chunks, 1u);
  // Deleting b leaves chunk 1 to a alone.
  ASSERT_TRUE(store_->delete_snapshot(b.id).is_ok());
  reclaim_all();
  r = store_->space_use();
  ASSERT_TRUE(r.is_ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].exclusive_chunks, 2u);
  EXPECT_EQ((*r)[0].shared_chunks, 0u);
}

TEST_P(SpaceTest, ADeletedSnapshotsChunksCountForNobodyUntilReclaimed) {
  SnapshotInfo a = snap();
  ASSERT_TRUE(store_->make_chunk_writeable(4, fresh(a)).is_ok());
  SnapshotInfo b = snap();
  ASSERT_TRUE(store_->delete_snapshot(a.id).is_ok());
  auto scan = store_->start_space_scan();
  ASSERT_TRUE(scan.is_ok());
  ASSERT_TRUE(*(*scan)->step(100));
  EXPECT_EQ((*scan)->unreferenced_chunks(), 1u);
  auto r = (*scan)->result();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].id, b.id);
  EXPECT_EQ(r[0].exclusive_chunks + r[0].shared_chunks, 0u);
  // A scan notices snapshots coming and going under it.
  EXPECT_FALSE((*scan)->snapshots_changed());
  snap();
  EXPECT_TRUE((*scan)->snapshots_changed());
}

TEST_P(SpaceTest, ExclusiveIsWhatDeletingFreesAfterRandomHistories) {
  const int histories = 12 * soak_factor();
  for (int h = 0; h < histories && !HasFailure(); ++h) {
    format(GetParam());
    check_history(0x5eed0000 + static_cast<uint64_t>(h), 150 + h * 20);
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, SpaceTest, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         [](const auto& info) { return std::string(store_format_name(info.param)); });

}  // namespace
}  // namespace multisnap
