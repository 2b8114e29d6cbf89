// What both stores must do alike for replication and lifecycle: diff from
// metadata, uuids, the written flag, origin-change tracking, the newest
// snapshot, properties.
#include <gtest/gtest.h>

#include <cstring>

#include "store/store_fixture.h"
#include "util/endian.h"

namespace multisnap {
namespace {

class CommonStoreTest : public testing::StoreFixture, public ::testing::WithParamInterface<StoreFormat> {
 protected:
  void SetUp() override { format(GetParam()); }
  std::vector<uint64_t> diff(const SnapshotInfo& a, const SnapshotInfo* b, uint64_t from = 0) {
    std::vector<uint64_t> out;
    std::optional<SnapshotInfo> fb;
    if (b) fb = fresh(*b);
    EXPECT_TRUE(store_->diff(fresh(a), fb ? &*fb : nullptr, from, [&](uint64_t c) {
      out.push_back(c);
      return true;
    }).is_ok());
    return out;
  }
};

TEST_P(CommonStoreTest, DiffComesFromMetadataAndIsExact) {
  SnapshotInfo s1 = snap();
  origin_write(3);
  origin_write(7);
  SnapshotInfo s2 = snap();
  origin_write(7);  // after both: one exception serves both, so unchanged between them
  origin_write(9);
  EXPECT_EQ(diff(s1, &s2), (std::vector<uint64_t>{3, 7}));
  EXPECT_EQ(diff(s2, &s1), (std::vector<uint64_t>{3, 7}));
  EXPECT_EQ(diff(s2, nullptr), (std::vector<uint64_t>{7, 9}));  // s2 vs the origin
  EXPECT_EQ(diff(s1, nullptr), (std::vector<uint64_t>{3, 7, 9}));
  EXPECT_EQ(diff(s1, &s2, 4), (std::vector<uint64_t>{7}));
  // A write to s2 makes it differ from s1 there too.
  ASSERT_TRUE(store_->make_chunk_writeable(11, fresh(s2)).is_ok());
  EXPECT_EQ(diff(s1, &s2), (std::vector<uint64_t>{3, 7, 11}));
  // Stopping early.
  int calls = 0;
  ASSERT_TRUE(store_->diff(fresh(s1), nullptr, 0, [&](uint64_t) { return ++calls < 2; }).is_ok());
  EXPECT_EQ(calls, 2);
  expect_clean();
}

TEST_P(CommonStoreTest, UuidsAreRandomGivenOrKeptAndSurviveReopen) {
  SnapshotInfo a = snap(), b = snap();
  EXPECT_FALSE(a.uuid.is_nil());
  EXPECT_NE(a.uuid, b.uuid);
  Uuid given = *Uuid::parse("01234567-89ab-4def-8123-456789abcdef");
  auto c = store_->create_snapshot(std::nullopt, "c", 5, given);
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->uuid, given);
  expect_clean();
  reopen();
  EXPECT_EQ(fresh(a).uuid, a.uuid);
  EXPECT_EQ(fresh(*c).uuid.to_string(), "01234567-89ab-4def-8123-456789abcdef");
  auto newest = store_->newest_snapshot();
  ASSERT_TRUE(newest.is_ok() && *newest);
  EXPECT_EQ((*newest)->id, c->id);
}

TEST_P(CommonStoreTest, WrittenFlagIsSetOnceAndPersists) {
  SnapshotInfo a = snap();
  EXPECT_FALSE(a.flags & kSnapshotWritten);
  EXPECT_TRUE(*store_->mark_written(a.id));
  EXPECT_FALSE(*store_->mark_written(a.id));
  expect_clean();
  reopen();
  EXPECT_TRUE(fresh(a).flags & kSnapshotWritten);
}

TEST_P(CommonStoreTest, OriginChangeIsRecordedOncePerNewestSnapshot) {
  EXPECT_FALSE(store_->record_origin_change());  // no snapshot: nothing to record
  SnapshotInfo a = snap();
  EXPECT_LT(store_->origin_changed_at(), a.id);
  EXPECT_TRUE(store_->record_origin_change());
  EXPECT_TRUE(store_->origin_change_uncommitted());
  EXPECT_FALSE(store_->record_origin_change());
  ASSERT_TRUE(store_->commit().is_ok());
  EXPECT_FALSE(store_->origin_change_uncommitted());
  EXPECT_GE(store_->origin_changed_at(), a.id);
  SnapshotInfo b = snap();
  EXPECT_LT(store_->origin_changed_at(), b.id);  // unchanged since b
  reopen();
  EXPECT_LT(store_->origin_changed_at(), b.id);
  EXPECT_GE(store_->origin_changed_at(), a.id);
}

TEST_P(CommonStoreTest, ZeroRemapsForHolesUseNoChunk) {
  SnapshotInfo a = snap();
  snap();
  uint64_t used = store_->stats().data_chunks_used;
  store_->reset_query(5);
  int remaps = 0;
  while (*store_->query_next_remap()) {
    CopyDescriptor d;
    auto c = store_->add_next_remap(&d, true);
    ASSERT_TRUE(c.is_ok());
    EXPECT_EQ(*c, kNoChunk);
    ++remaps;
  }
  EXPECT_GE(remaps, 1);
  EXPECT_EQ(store_->stats().data_chunks_used, used);
  EXPECT_EQ(map(5, fresh(a)).kind, ChunkMapping::Kind::kZero);
  expect_clean();
}

TEST_P(CommonStoreTest, PropertiesPersistAndAreChecked) {
  EXPECT_FALSE(*store_->get_property(1));
  ASSERT_TRUE(store_->set_property(1, std::string("{\"every\":300}")).is_ok());
  ASSERT_TRUE(store_->set_property(2, std::string(254, 'x')).is_ok());
  EXPECT_EQ(store_->set_property(3, std::string(255, 'x')).code(), Code::kInvalidArgument);
  expect_clean();
  reopen();
  EXPECT_EQ(**store_->get_property(1), "{\"every\":300}");
  EXPECT_EQ((*store_->get_property(2))->size(), 254u);
  ASSERT_TRUE(store_->set_property(1, std::nullopt).is_ok());
  EXPECT_FALSE(*store_->get_property(1));
  expect_clean();
}

// The committed store area, read at the byte offsets of docs/format.md
// section 7 (independently of the *_disk structs that write it).
TEST_P(CommonStoreTest, StoreAreaBytesAreWhereTheFormatSays) {
  SnapshotInfo a = snap();
  snap();
  origin_write(5);
  ASSERT_TRUE(store_->record_origin_change());
  ASSERT_TRUE(store_->delete_snapshot(a.id).is_ok());
  PendingReceive p;
  p.target = *Uuid::parse("01234567-89ab-4def-8123-456789abcdef");
  p.base = 2;
  p.origin_changed_before = 1;
  store_->set_pending_receive(p);
  ASSERT_TRUE(store_->set_property(kPolicyProperty, std::string("{}")).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  const uint8_t* area = store_->tm().committed_store_area().data();
  EXPECT_NE(load_le<uint64_t>(area + 0), 0u);  // snapshots tree root
  EXPECT_NE(load_le<uint64_t>(area + 8), 0u);  // names tree root
  EXPECT_EQ(load_le<uint32_t>(area + 16), 3u);  // next snapshot ID
  EXPECT_EQ(load_le<uint32_t>(area + 20), 1u);  // live snapshots
  EXPECT_EQ(load_le<uint32_t>(area + 24), 2u);  // origin changed at
  EXPECT_EQ(load_le<uint32_t>(area + 28), 2u);  // pending receive: base
  EXPECT_EQ(std::memcmp(area + 32, p.target.bytes.data(), 16), 0);
  EXPECT_EQ(load_le<uint32_t>(area + 48), 1u);  // origin changed at before it
  EXPECT_EQ(load_le<uint32_t>(area + 52), 0u);  // reserved
  EXPECT_NE(load_le<uint64_t>(area + 56), 0u);  // properties tree root
  EXPECT_NE(load_le<uint64_t>(area + 64), 0u);  // exceptions tree root (both formats)
  StoreStats st = store_->stats();
  if (GetParam() == StoreFormat::kRange) {
    EXPECT_EQ(load_le<uint64_t>(area + 80), st.exceptions);  // exception count
    for (size_t i = 108; i < kStoreAreaSize; ++i) ASSERT_EQ(area[i], 0) << "reserved byte " << i;
  } else {
    EXPECT_EQ(load_le<uint64_t>(area + 72), st.exceptions);  // exception count
    uint64_t live = load_le<uint64_t>(area + 80), sweep = load_le<uint64_t>(area + 88),
             pending = load_le<uint64_t>(area + 96);
    EXPECT_EQ(__builtin_popcountll(live), 1);  // one live snapshot
    EXPECT_EQ(__builtin_popcountll(sweep | pending), 1);  // the deleted one, not yet swept
    for (size_t i = 120; i < kStoreAreaSize; ++i) ASSERT_EQ(area[i], 0) << "reserved byte " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, CommonStoreTest, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         [](const auto& info) { return std::string(store_format_name(info.param)); });

}  // namespace
}  // namespace multisnap
