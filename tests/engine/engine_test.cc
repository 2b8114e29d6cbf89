// Behaviour of the engine through its public API, on in-memory devices.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include "engine/engine_fixture.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "support/hooked_device.h"
#include "support/memory_device.h"
#include "support/test_io_context.h"

namespace multisnap {
namespace {

using testing::EngineHarness;
using testing::EngineParams;

class EngineTest : public ::testing::TestWithParam<EngineParams> {
 protected:
  void SetUp() override {
    h_ = std::make_unique<EngineHarness>(GetParam());
    h_->open();
    origin_ = h_->volume("origin");
  }
  void TearDown() override {
    origin_.reset();
    if (h_) {
      h_->close();
      for (auto& p : h_->check()) ADD_FAILURE() << p;
    }
  }
  std::vector<uint8_t> bytes(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    return testing::random_bytes(rng, n);
  }
  uint32_t chunk() const { return GetParam().chunk; }
  uint64_t copies() { return h_->engine().status().counters.chunks_copied; }
  bool range() const { return GetParam().format == StoreFormat::kRange; }

  std::unique_ptr<EngineHarness> h_;
  VolumeRef origin_;
};

TEST_P(EngineTest, SnapshotKeepsThePastWhileTheOriginMovesOn) {
  auto before = bytes(3 * chunk(), 1);
  ASSERT_TRUE(h_->write(origin_, 0, before).is_ok());
  SnapshotId s = h_->snapshot();
  auto after = bytes(3 * chunk(), 2);
  ASSERT_TRUE(h_->write(origin_, 100, after).is_ok());
  auto snap = h_->volume("snapshot/" + std::to_string(s));
  EXPECT_EQ(h_->read(snap, 0, before.size()), before);
  EXPECT_EQ(h_->read(origin_, 100, after.size()), after);
  EXPECT_EQ(copies(), 4u);  // the write touched 4 chunks
}

// Several snapshots deleted in one call: checked first (all or none), then
// one commit; their data stays readable through the snapshots left.
TEST_P(EngineTest, DeletingSeveralIsAllOrNoneInOneCommit) {
  auto data = bytes(2 * chunk(), 1);
  ASSERT_TRUE(h_->write(origin_, 0, data).is_ok());
  std::vector<SnapshotId> ids;
  for (int i = 0; i < 12; ++i) ids.push_back(h_->snapshot());
  const SnapshotId kept = ids.back();
  ids.pop_back();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(2 * chunk(), 2)).is_ok());
  Engine& e = h_->engine();
  auto count = [&] { return e.list_snapshots()->size(); };
  EXPECT_EQ(e.delete_snapshots({ids[0], 999, ids[1]}).code(), Code::kNotFound);
  EXPECT_EQ(e.delete_snapshots({ids[0], ids[0]}).code(), Code::kInvalidArgument);
  {
    auto open = h_->volume("snapshot/" + std::to_string(ids[1]));
    EXPECT_EQ(e.delete_snapshots({ids[0], ids[1]}).code(), Code::kBusy);
  }
  EXPECT_EQ(count(), 12u) << "a refused call deleted some";
  uint64_t commits = e.status().counters.commits;
  std::reverse(ids.begin(), ids.end());  // any order
  ASSERT_TRUE(e.delete_snapshots(ids).is_ok());
  // One commit for the 11, and the background reclaim's (a pass or two);
  // a commit per snapshot would be 11 at least.
  EXPECT_LT(e.status().counters.commits - commits, ids.size()) << "the deletes did not share a commit";
  ASSERT_EQ(count(), 1u);
  {
    auto last = h_->volume("snapshot/" + std::to_string(kept));
    EXPECT_EQ(h_->read(last, 0, data.size()), data);
  }
  h_->close();
  h_->open();
  EXPECT_EQ(h_->engine().list_snapshots()->size(), 1u);
}

TEST_P(EngineTest, SecondWriteToAChunkCopiesNothing) {
  SnapshotId s = h_->snapshot();
  (void)s;
  ASSERT_TRUE(h_->write(origin_, 0, bytes(512, 1)).is_ok());
  uint64_t c = copies();
  ASSERT_TRUE(h_->write(origin_, 1024, bytes(512, 2)).is_ok());
  EXPECT_EQ(copies(), c);
}

// The seed's example: snapshots 1, 2, 3 and a write to snapshot 2. The
// range store then needs two copies for an origin write ([1..1] and
// [3..3]); the bitmask store one (mask {1, 3}).
TEST_P(EngineTest, SeedExampleOriginWriteAfterASnapshotWrite) {
  SnapshotId s1 = h_->snapshot();
  SnapshotId s2 = h_->snapshot();
  SnapshotId s3 = h_->snapshot();
  (void)s1, (void)s3;
  auto old = h_->read(origin_, 0, chunk());
  auto snap2 = h_->volume("snapshot/" + std::to_string(s2));
  ASSERT_TRUE(h_->write(snap2, 10, bytes(100, 3)).is_ok());
  uint64_t c = copies();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(chunk(), 4)).is_ok());
  EXPECT_EQ(copies() - c, range() ? 2u : 1u);
  EXPECT_EQ(h_->read(h_->volume("snapshot/1"), 0, chunk()), old);
  EXPECT_EQ(h_->read(h_->volume("snapshot/3"), 0, chunk()), old);
}

// After writes to several snapshots, one origin write: the bitmask store
// makes one copy whatever the history; the range store one per gap.
TEST_P(EngineTest, OriginWriteAfterWritesToSeveralSnapshots) {
  std::vector<SnapshotId> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(h_->snapshot());
  auto old = h_->read(origin_, 0, chunk());
  for (int i : {1, 3, 5}) ASSERT_TRUE(h_->write(h_->volume("snapshot/" + std::to_string(ids[i])), 0, bytes(64, i)).is_ok());
  uint64_t c = copies();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(chunk(), 9)).is_ok());
  // Range: gaps [1..1], [3..3], [5..5], [7..8]; bitmask: one mask of five.
  EXPECT_EQ(copies() - c, range() ? 4u : 1u);
  for (int i : {0, 2, 4, 6, 7}) EXPECT_EQ(h_->read(h_->volume("snapshot/" + std::to_string(ids[i])), 0, chunk()), old);
}

// Snapshot reads of chunks the engine has seen in the store are served on
// the caller's thread (read_map.h). A write to one snapshot may move others
// that shared its store chunk (the range store's carve of [1..3] when 2 is
// written); their next reads must not use the old place, which the written
// snapshot now owns.
TEST_P(EngineTest, DirectSnapshotReadsFollowMovesCausedByWritesToOtherSnapshots) {
  auto old = bytes(2 * chunk(), 11);
  ASSERT_TRUE(h_->write(origin_, 0, old).is_ok());
  std::vector<VolumeRef> snaps;
  for (int i = 0; i < 3; ++i) snaps.push_back(h_->volume("snapshot/" + std::to_string(h_->snapshot())));
  ASSERT_TRUE(h_->write(origin_, 0, bytes(2 * chunk(), 12)).is_ok());  // one copy for all three
  auto direct = [&] { return h_->engine().status().counters.direct_reads; };
  for (auto& v : snaps) EXPECT_EQ(h_->read(v, 0, old.size()), old);  // through the engine: remembered
  uint64_t d0 = direct();
  for (auto& v : snaps) EXPECT_EQ(h_->read(v, 0, old.size()), old);
  EXPECT_EQ(direct() - d0, 3u);
  // Write the middle snapshot, read the others (directly or not) right away.
  auto patch = bytes(chunk() + 100, 13);
  ASSERT_TRUE(h_->write(snaps[1], 50, patch).is_ok());
  auto mid = old;
  std::copy(patch.begin(), patch.end(), mid.begin() + 50);
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(h_->read(snaps[0], 0, old.size()), old);
    EXPECT_EQ(h_->read(snaps[1], 0, old.size()), mid);
    EXPECT_EQ(h_->read(snaps[2], 0, old.size()), old);
  }
  // Overwrite the middle snapshot again in place; trim a whole chunk of it.
  auto patch2 = bytes(chunk(), 14);
  ASSERT_TRUE(h_->write(snaps[1], 0, patch2).is_ok());
  ASSERT_TRUE(h_->io(snaps[1], IoRequest::Op::kTrim, chunk(), chunk()).is_ok());
  std::vector<uint8_t> mid2(old.size(), 0);
  std::copy(patch2.begin(), patch2.end(), mid2.begin());
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(h_->read(snaps[0], 0, old.size()), old);
    EXPECT_EQ(h_->read(snaps[1], 0, old.size()), mid2);
    EXPECT_EQ(h_->read(snaps[2], 0, old.size()), old);
  }
  EXPECT_GT(direct() - d0, 3u);
}

TEST_P(EngineTest, SeedExampleCopiesOnceWithoutASnapshotWrite) {
  h_->snapshot();
  h_->snapshot();
  h_->snapshot();
  uint64_t c = copies();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(chunk(), 4)).is_ok());
  EXPECT_EQ(copies() - c, 1u);  // one entry [1..3]
}

TEST_P(EngineTest, WritableSnapshotsAndSnapshotsOfSnapshots) {
  auto base = bytes(2 * chunk(), 5);
  ASSERT_TRUE(h_->write(origin_, 0, base).is_ok());
  SnapshotId s = h_->snapshot(std::nullopt, "base");
  auto snap = h_->volume("snapshot/base");
  auto patch = bytes(777, 6);
  ASSERT_TRUE(h_->write(snap, 300, patch).is_ok());
  auto expect = base;
  std::copy(patch.begin(), patch.end(), expect.begin() + 300);
  EXPECT_EQ(h_->read(snap, 0, expect.size()), expect);
  EXPECT_EQ(h_->read(origin_, 0, base.size()), base);  // the origin is untouched
  if (!range()) {  // the bitmask store cannot do O(1) snapshots of snapshots
    EXPECT_EQ(h_->engine().create_snapshot(s, "").status().code(), Code::kNotSupported);
    return;
  }
  SnapshotId clone = h_->snapshot(s);
  auto cl = h_->volume("snapshot/" + std::to_string(clone));
  EXPECT_EQ(h_->read(cl, 0, expect.size()), expect);
  ASSERT_TRUE(h_->write(snap, 0, bytes(100, 7)).is_ok());  // the parent moves on
  EXPECT_EQ(h_->read(cl, 0, expect.size()), expect);
  auto deeper = h_->engine().create_snapshot(clone, "");
  EXPECT_EQ(deeper.status().code(), Code::kNotSupported);
}

TEST_P(EngineTest, TrimAndWriteZeroes) {
  auto data = bytes(4 * chunk(), 8);
  ASSERT_TRUE(h_->write(origin_, 0, data).is_ok());
  SnapshotId s = h_->snapshot();
  auto snap = h_->volume("snapshot/" + std::to_string(s));
  // Snapshot: whole chunks read zero after a trim; a partial trim is a no-op.
  ASSERT_TRUE(h_->io(snap, IoRequest::Op::kTrim, chunk() / 2, 2 * chunk()).is_ok());
  auto got = h_->read(snap, 0, data.size());
  for (uint64_t i = 0; i < data.size(); ++i) {
    bool zeroed = i >= chunk() && i < 2 * chunk();
    ASSERT_EQ(got[i], zeroed ? 0 : data[i]) << i;
  }
  // Write-zeroes zeroes exactly its range, on both.
  ASSERT_TRUE(h_->io(snap, IoRequest::Op::kWriteZeroes, 3 * chunk() + 7, 100).is_ok());
  ASSERT_TRUE(h_->io(origin_, IoRequest::Op::kWriteZeroes, 10, 3 * chunk()).is_ok());
  got = h_->read(snap, 3 * chunk(), chunk());
  for (uint64_t i = 0; i < chunk(); ++i) ASSERT_EQ(got[i], (i >= 7 && i < 107) ? 0 : data[3 * chunk() + i]);
  got = h_->read(origin_, 0, data.size());
  for (uint64_t i = 0; i < data.size(); ++i) ASSERT_EQ(got[i], (i >= 10 && i < 10 + 3 * chunk()) ? 0 : data[i]);
  // The snapshot still has its old contents where the origin was zeroed.
  got = h_->read(snap, 0, chunk());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin()));
}

TEST_P(EngineTest, BadRequestsAreRefusedCleanly) {
  std::vector<uint8_t> buf(8192);
  uint64_t size = GetParam().origin_size;
  EXPECT_EQ(h_->io(origin_, IoRequest::Op::kRead, size - 100, 200, buf.data()).code(), Code::kOutOfRange);
  EXPECT_EQ(h_->io(origin_, IoRequest::Op::kWrite, UINT64_MAX - 10, 100, buf.data()).code(), Code::kOutOfRange);
  EXPECT_TRUE(h_->io(origin_, IoRequest::Op::kRead, size, 0, buf.data()).is_ok());
  EXPECT_EQ(h_->engine().open_volume("snapshot/99").status().code(), Code::kNotFound);
  EXPECT_EQ(h_->engine().open_volume("bogus").status().code(), Code::kNotFound);
  EXPECT_EQ(h_->engine().delete_snapshot(42).code(), Code::kNotFound);
}

TEST_P(EngineTest, DeleteIsRefusedWhileOpenAndReclaimsAfterwards) {
  ASSERT_TRUE(h_->write(origin_, 0, bytes(8 * chunk(), 9)).is_ok());
  SnapshotId s = h_->snapshot();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(8 * chunk(), 10)).is_ok());
  EXPECT_EQ(h_->engine().status().store.data_chunks_used, 8u);
  {
    auto snap = h_->volume("snapshot/" + std::to_string(s));
    EXPECT_EQ(h_->engine().delete_snapshot(s).code(), Code::kBusy);
  }
  ASSERT_TRUE(h_->engine().delete_snapshot(s).is_ok());
  EXPECT_EQ(h_->engine().open_volume("snapshot/" + std::to_string(s)).status().code(), Code::kNotFound);
  for (int i = 0; i < 1000 && h_->engine().status().store.reclaim_active; ++i) h_->engine().poll();
  EXPECT_EQ(h_->engine().status().store.data_chunks_used, 0u);
  // IDs are never reused.
  EXPECT_EQ(h_->snapshot(), s + 1);
}

TEST_P(EngineTest, StatePersistsAcrossReopen) {
  auto a = bytes(3 * chunk(), 11);
  ASSERT_TRUE(h_->write(origin_, 0, a).is_ok());
  SnapshotId s = h_->snapshot(std::nullopt, "keep");
  auto b = bytes(3 * chunk(), 12);
  ASSERT_TRUE(h_->write(origin_, 0, b).is_ok());
  origin_.reset();
  h_->close();
  h_->open();
  origin_ = h_->volume("origin");
  EXPECT_EQ(h_->read(origin_, 0, b.size()), b);
  EXPECT_EQ(h_->read(h_->volume("snapshot/keep"), 0, a.size()), a);
  auto list = h_->engine().list_snapshots();
  ASSERT_TRUE(list.is_ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, s);
  EXPECT_EQ((*list)[0].name, "keep");
}

TEST_P(EngineTest, FlushAndFuaMakeWritesDurable) {
  SnapshotId s = h_->snapshot();
  auto snap = h_->volume("snapshot/" + std::to_string(s));
  auto a = bytes(2 * chunk(), 13), b = bytes(chunk(), 14);
  ASSERT_TRUE(h_->write(origin_, 0, a).is_ok());
  ASSERT_TRUE(h_->write(snap, chunk(), b).is_ok());
  ASSERT_TRUE(h_->io(origin_, IoRequest::Op::kFlush, 0, 0).is_ok());
  auto c = bytes(chunk(), 15);
  ASSERT_TRUE(h_->io(snap, IoRequest::Op::kWrite, 0, c.size(), c.data(), true).is_ok());
  // Power cut: only what flush/FUA promised is guaranteed.
  h_->cut_power();
  snap.reset();
  origin_.reset();
  h_->close();
  std::mt19937_64 rng(5);
  h_->origin_mem().crash(rng);
  h_->store_mem().crash(rng);
  h_->restore_power();
  for (auto& p : h_->check()) ADD_FAILURE() << p;
  h_->open();
  origin_ = h_->volume("origin");
  snap = h_->volume("snapshot/" + std::to_string(s));
  EXPECT_EQ(h_->read(origin_, 0, a.size()), a);
  EXPECT_EQ(h_->read(snap, chunk(), b.size()), b);
  EXPECT_EQ(h_->read(snap, 0, c.size()), c);
}

TEST_P(EngineTest, SnapshotCreateIsDurableAndHoldsAcknowledgedWrites) {
  auto a = bytes(2 * chunk(), 16);
  ASSERT_TRUE(h_->write(origin_, 0, a).is_ok());  // acknowledged, never flushed
  SnapshotId s = h_->snapshot();
  h_->cut_power();
  origin_.reset();
  h_->close();
  std::mt19937_64 rng(6);
  h_->origin_mem().crash(rng);
  h_->store_mem().crash(rng);
  h_->restore_power();
  h_->open();
  origin_ = h_->volume("origin");
  EXPECT_EQ(h_->read(h_->volume("snapshot/" + std::to_string(s)), 0, a.size()), a);
}

TEST_P(EngineTest, ConcurrentRequestsOnSharedChunks) {
  // Origin writes and snapshot reads of the same chunks in one batch: the
  // snapshot must read the old data whatever the interleaving.
  auto old = bytes(16 * chunk(), 17);
  ASSERT_TRUE(h_->write(origin_, 0, old).is_ok());
  SnapshotId s = h_->snapshot();
  auto snap = h_->volume("snapshot/" + std::to_string(s));
  std::vector<std::vector<uint8_t>> reads(16, std::vector<uint8_t>(chunk()));
  std::vector<std::vector<uint8_t>> writes;
  int done = 0;
  for (int i = 0; i < 16; ++i) {
    writes.push_back(bytes(chunk() / 2, 100 + i));
    h_->engine().submit(origin_, {IoRequest::Op::kWrite, uint64_t(i) * chunk(), chunk() / 2, writes.back().data(), false},
                        [&](Status st) { EXPECT_TRUE(st.is_ok()); ++done; });
    h_->engine().submit(snap, {IoRequest::Op::kRead, uint64_t(i) * chunk(), chunk(), reads[i].data(), false},
                        [&](Status st) { EXPECT_TRUE(st.is_ok()); ++done; });
  }
  h_->engine().run_until_idle();
  EXPECT_EQ(done, 32);
  for (int i = 0; i < 16; ++i)
    EXPECT_TRUE(std::equal(reads[i].begin(), reads[i].end(), old.begin() + i * chunk())) << i;
  EXPECT_EQ(h_->read(snap, 0, old.size()), old);
}

std::vector<EngineParams> engine_params() {
  std::vector<EngineParams> out;
  for (StoreFormat f : {StoreFormat::kRange, StoreFormat::kBitmask}) {
    out.push_back({4096, 1 << 20, 48 << 20, 1 << 20, TestIo::kSync, 1, 8, f});
    out.push_back({65536, 4 << 20, 64 << 20, 1 << 20, TestIo::kReordering, 2, 8, f});
    out.push_back({4096, 1 << 20, 48 << 20, 16 * 4096, TestIo::kReordering, 3, 2, f});
  }
  return out;
}

// snapshot list --space through the engine: the pass in pages of 3
// exceptions gives the store's one-shot figures, reports progress, and a
// snapshot's exclusive chunks are what deleting it frees.
TEST_P(EngineTest, SpaceUseInPagesIsExactAndIsWhatDeletingFrees) {
  EngineParams p = GetParam();
  p.space_page = 3;
  origin_.reset();
  h_->close();
  h_ = std::make_unique<EngineHarness>(p);
  h_->open();
  origin_ = h_->volume("origin");
  ASSERT_TRUE(h_->write(origin_, 0, bytes(8 * chunk(), 1)).is_ok());
  SnapshotId a = h_->snapshot();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(4 * chunk(), 2)).is_ok());  // chunks 0-3 for a alone
  SnapshotId b = h_->snapshot();
  ASSERT_TRUE(h_->write(origin_, 2 * chunk(), bytes(4 * chunk(), 3)).is_ok());  // 4, 5 for a and b
  ASSERT_TRUE(h_->write(h_->volume("snapshot/" + std::to_string(b)), 7 * chunk(), bytes(100, 4)).is_ok());
  uint64_t calls = 0, last_done = 0;
  auto use = h_->engine().space_use([&](uint64_t done, uint64_t) {
    ++calls;
    last_done = done;
  });
  ASSERT_TRUE(use.is_ok()) << use.status().to_string();
  ASSERT_EQ(use->snapshots.size(), 2u);
  EXPECT_GT(calls, 2u);
  EXPECT_EQ(last_done, use->exceptions);
  EXPECT_EQ(h_->engine().status().space_scan.active, false);
  const SnapshotSpace& sa = use->snapshots[0];
  const SnapshotSpace& sb = use->snapshots[1];
  EXPECT_EQ(sa.id, a);
  EXPECT_EQ(sa.exclusive_chunks, 4u);
  EXPECT_EQ(sa.shared_chunks, 2u);
  EXPECT_EQ(sb.exclusive_chunks, 3u);  // 2, 3 (copied after a's own) and its write to 7
  EXPECT_EQ(sb.shared_chunks, 2u);
  uint64_t used = h_->engine().status().store.data_chunks_used;
  ASSERT_TRUE(h_->engine().delete_snapshot(a).is_ok());
  for (int i = 0; i < 10000 && h_->engine().status().store.reclaim_active; ++i) h_->engine().poll();
  ASSERT_FALSE(h_->engine().status().store.reclaim_active);
  EXPECT_EQ(used - h_->engine().status().store.data_chunks_used, sa.exclusive_chunks);
}

INSTANTIATE_TEST_SUITE_P(Stores, EngineTest, ::testing::ValuesIn(engine_params()), [](const auto& info) {
  const EngineParams& p = info.param;
  return std::string(store_format_name(p.format)) + "_" + std::to_string(p.chunk / 1024) + "K_" +
         (p.io == TestIo::kSync ? "sync" : "reorder") + (p.cache < (1 << 20) ? "_tinycache" : "");
});

// Deletes that arrive together share one commit (ControlOp::committed): 8
// clients delete while the engine thread is held inside another delete's
// commit; when it goes on, the 8 are one batch and one commit, each told
// its own outcome (one of them names a snapshot that does not exist).
TEST(EngineBatching, DeletesQueuedTogetherShareOneCommit) {
  MemoryDevice origin(8 << 20, "origin"), store_mem(64 << 20, "store");
  CreateOptions co;
  co.chunk_size = 65536;
  co.origin_size = 8 << 20;
  co.origin_path = "memory";
  ASSERT_TRUE(format_store(store_mem, co).is_ok());
  HookedDevice store(store_mem);
  EngineOptions eo;
  eo.threaded = true;
  auto e = Engine::open(origin, store, eo, make_test_io_context(TestIo::kSync));
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  Engine& engine = **e;
  std::vector<SnapshotId> ids;
  for (int i = 0; i < 9; ++i) ids.push_back(engine.create_snapshot(std::nullopt, "")->id);
  std::mutex mu;
  std::condition_variable cv;
  bool armed = true, held = false, go = false;
  store.on_flush([&] {
    std::unique_lock lock(mu);
    if (!armed) return;
    armed = false;
    held = true;
    cv.notify_all();
    cv.wait(lock, [&] { return go; });
  });
  const uint64_t commits_before = engine.status().counters.commits;
  std::thread first([&] { EXPECT_TRUE(engine.delete_snapshot(ids[8]).is_ok()); });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return held; });
  }
  std::vector<Status> results(9);
  std::vector<std::thread> clients;
  std::atomic<int> calling{0};
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] {
      ++calling;
      results[i] = engine.delete_snapshot(i == 7 ? 4242 : ids[i]);
    });
  // Each queues its operation at once after calling; then some slack for
  // a busy machine. All 8 wait behind the held commit.
  while (calling.load() < 8) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    std::lock_guard lock(mu);
    go = true;
  }
  cv.notify_all();
  first.join();
  for (auto& t : clients) t.join();
  for (int i = 0; i < 7; ++i) EXPECT_TRUE(results[i].is_ok()) << i << ": " << results[i].to_string();
  EXPECT_EQ(results[7].code(), Code::kNotFound);
  // The held delete's commit, one for the batch, and the background
  // reclaim's (one pass after each, a commit or two each); one commit per
  // delete would be at least 1 + 7 + 1.
  EXPECT_LE(engine.status().counters.commits - commits_before, 6u) << "the 8 deletes did not share a commit";
  auto left = engine.list_snapshots();
  ASSERT_TRUE(left.is_ok());
  ASSERT_EQ(left->size(), 1u);
  EXPECT_EQ(left->front().id, ids[7]);
  e->reset();
  for (auto& p : testing::check_store(store_mem)) ADD_FAILURE() << p;
  // Durable: a reopen sees none of them.
  auto again = Engine::open(origin, store_mem, EngineOptions{}, make_test_io_context(TestIo::kSync));
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ((*again)->list_snapshots()->size(), 1u);
}

}  // namespace
}  // namespace multisnap
