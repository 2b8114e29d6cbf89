// Injected I/O errors, a full store and damaged metadata: clear errors,
// never corruption.
#include <gtest/gtest.h>

#include "engine/engine_fixture.h"

namespace multisnap {
namespace {

using testing::EngineHarness;
using testing::EngineParams;

std::vector<uint8_t> bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return testing::random_bytes(rng, n);
}

class ErrorTest : public ::testing::TestWithParam<StoreFormat> {
 protected:
  void SetUp() override {
    h_ = std::make_unique<EngineHarness>(params());
    h_->open();
    origin_ = h_->volume("origin");
  }
  virtual EngineParams params() {
    EngineParams p;
    p.format = GetParam();
    return p;
  }
  void reopen() {
    origin_.reset();
    h_->close();
    h_->store_dev().clear_rules();
    h_->origin_dev().clear_rules();
    for (auto& p : h_->check()) ADD_FAILURE() << p;
    h_->open();
    origin_ = h_->volume("origin");
  }
  FaultRule rule(FaultOp op, uint64_t nth = 1, bool sticky = false, Code code = Code::kIoError) {
    FaultRule r;
    r.op = op;
    r.nth = nth;
    r.sticky = sticky;
    r.code = code;
    return r;
  }
  std::unique_ptr<EngineHarness> h_;
  VolumeRef origin_;
};

TEST_P(ErrorTest, CopyWriteFailureStopsChangesButNotReads) {
  auto a = bytes(8192, 1);
  ASSERT_TRUE(h_->write(origin_, 0, a).is_ok());
  SnapshotId s = h_->snapshot();
  auto snap = h_->volume("snapshot/" + std::to_string(s));
  h_->store_dev().add_rule(rule(FaultOp::kWrite));  // the copy's write
  Status st = h_->write(origin_, 0, bytes(100, 2));
  EXPECT_FALSE(st.is_ok());
  EXPECT_EQ(st.to_errno(), EIO);
  EXPECT_NE(st.message().find("injected"), std::string::npos) << st.to_string();
  // The origin was not overwritten, the snapshot still reads right.
  EXPECT_EQ(h_->read(origin_, 0, a.size()), a);
  EXPECT_EQ(h_->read(snap, 0, a.size()), a);
  // Further changes are refused until the store is reopened.
  Status again = h_->write(origin_, 4096, bytes(10, 3));
  EXPECT_EQ(again.code(), Code::kFailed);
  EXPECT_FALSE(h_->engine().status().failure.empty());
  EXPECT_EQ(h_->engine().create_snapshot(std::nullopt, "").status().code(), Code::kFailed);
  snap.reset();
  reopen();
  EXPECT_EQ(h_->read(h_->volume("snapshot/" + std::to_string(s)), 0, a.size()), a);
  ASSERT_TRUE(h_->write(origin_, 0, bytes(100, 4)).is_ok());
}

TEST_P(ErrorTest, OriginReadFailureDuringCopy) {
  h_->snapshot();
  h_->origin_dev().add_rule(rule(FaultOp::kRead));
  EXPECT_EQ(h_->write(origin_, 0, bytes(100, 5)).to_errno(), EIO);
  reopen();
}

TEST_P(ErrorTest, CommitFlushFailure) {
  h_->snapshot();
  h_->store_dev().add_rule(rule(FaultOp::kFlush));
  EXPECT_EQ(h_->write(origin_, 0, bytes(100, 6)).to_errno(), EIO);
  reopen();
  EXPECT_EQ(h_->engine().list_snapshots()->size(), 1u);
}

TEST_P(ErrorTest, DataWriteFailureFailsOnlyThatRequest) {
  h_->origin_dev().add_rule(rule(FaultOp::kWrite));
  EXPECT_EQ(h_->write(origin_, 0, bytes(100, 7)).to_errno(), EIO);
  EXPECT_TRUE(h_->write(origin_, 0, bytes(100, 8)).is_ok());
  EXPECT_TRUE(h_->engine().status().failure.empty());
}

TEST_P(ErrorTest, FlushFailureIsReported) {
  h_->origin_dev().add_rule(rule(FaultOp::kFlush));
  EXPECT_EQ(h_->io(origin_, IoRequest::Op::kFlush, 0, 0).to_errno(), EIO);
  EXPECT_TRUE(h_->io(origin_, IoRequest::Op::kFlush, 0, 0).is_ok());
}

TEST_P(ErrorTest, ReadFailureOfASnapshotChunk) {
  h_->snapshot();
  ASSERT_TRUE(h_->write(origin_, 0, bytes(4096, 9)).is_ok());
  auto snap = h_->volume("snapshot/1");
  h_->store_dev().add_rule(rule(FaultOp::kRead, 1, true));
  std::vector<uint8_t> buf(4096);
  // The metadata is cached; the data read hits the device and fails.
  EXPECT_EQ(h_->io(snap, IoRequest::Op::kRead, 0, 4096, buf.data()).to_errno(), EIO);
  h_->store_dev().clear_rules();
  EXPECT_TRUE(h_->io(snap, IoRequest::Op::kRead, 0, 4096, buf.data()).is_ok());
}

TEST_P(ErrorTest, RandomFaultsNeverCorruptTheStore) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    FaultRule r;
    r.probability = 0.03;
    r.seed = seed;
    h_->store_dev().add_rule(r);
    r.seed = seed + 100;
    h_->origin_dev().add_rule(r);
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 150; ++i) {
      switch (rng() % 6) {
        case 0: h_->engine().create_snapshot(std::nullopt, "").status().ignore(); break;
        case 1: {
          auto list = h_->engine().list_snapshots();
          if (list.is_ok() && !list->empty()) h_->engine().delete_snapshot((*list)[rng() % list->size()].id).ignore();
          break;
        }
        case 2: h_->io(origin_, IoRequest::Op::kFlush, 0, 0).ignore(); break;
        default: {
          auto data = bytes(1 + rng() % 9000, rng());
          uint64_t off = rng() % ((1 << 20) - data.size());
          h_->write(origin_, off, data).ignore();
        }
      }
    }
    reopen();  // check runs here: the store must be consistent
  }
}

// Deleting a snapshot commits; that commit must not include the remap of a
// copy still in flight (whose write then fails here).
TEST_P(ErrorTest, DeleteDoesNotCommitARemapWhoseCopyIsInFlight) {
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    EngineParams p = params();
    p.io = TestIo::kReordering;
    p.seed = seed;
    EngineHarness h(p);
    h.open();
    auto origin = h.volume("origin");
    std::vector<uint8_t> aa(4096, 0xaa), bb(4096, 0xbb);
    ASSERT_TRUE(h.write(origin, 0, aa).is_ok());
    SnapshotId s1 = h.snapshot();
    SnapshotId s2 = h.snapshot();
    // The first origin write after a snapshot records that the origin
    // changed (a commit of its own); do that elsewhere first.
    ASSERT_TRUE(h.write(origin, 8 * h.engine().layout().chunk_size, aa).is_ok());
    bool done = false;
    h.engine().submit(origin, {IoRequest::Op::kWrite, 0, 4096, bb.data(), false}, [&](Status) { done = true; });
    h.engine().poll();  // the copy job starts
    FaultRule fr;
    fr.op = FaultOp::kWrite;
    fr.window_offset = h.engine().layout().data_start;
    h.store_dev().add_rule(fr);  // its write to the new chunk fails
    // The delete waits for the copy; it then fails with the store.
    EXPECT_EQ(h.engine().delete_snapshot(s2).code(), Code::kFailed);
    while (!done) h.engine().poll();
    origin.reset();
    h.close();
    h.store_dev().clear_rules();
    for (auto& pr : h.check()) ADD_FAILURE() << pr;
    h.open();
    EXPECT_EQ(h.read(h.volume("snapshot/" + std::to_string(s1)), 0, 4096), aa) << "seed " << seed;
    h.close();
  }
}

// Zeroing S2's view of a chunk it shares with S1 leaves S1 alone on it; S1
// must not write into it in place before that is committed, or a failed
// commit would leave S2 showing S1's data.
TEST_P(ErrorTest, ZeroingASharedChunkMakesTheOtherSharerWait) {
  std::vector<uint8_t> aa(4096, 0xaa), cc(4096, 0xcc), bb(4096, 0xbb);
  ASSERT_TRUE(h_->write(origin_, 0, aa).is_ok());
  SnapshotId s1 = h_->snapshot();
  SnapshotId s2 = h_->snapshot();
  ASSERT_TRUE(h_->write(origin_, 0, cc).is_ok());  // one chunk, shared by s1 and s2, committed
  auto v1 = h_->volume("snapshot/" + std::to_string(s1));
  auto v2 = h_->volume("snapshot/" + std::to_string(s2));
  FaultRule fr;
  fr.op = FaultOp::kFlush;
  fr.sticky = true;
  h_->store_dev().add_rule(fr);  // every commit from now on fails
  int done = 0;
  h_->engine().submit(v2, {IoRequest::Op::kTrim, 0, 4096, nullptr, false}, [&](Status) { ++done; });
  h_->engine().submit(v1, {IoRequest::Op::kWrite, 0, 4096, bb.data(), false}, [&](Status) { ++done; });
  while (done < 2) h_->engine().poll();
  v1.reset();
  v2.reset();
  reopen();
  EXPECT_EQ(h_->read(h_->volume("snapshot/" + std::to_string(s2)), 0, 4096), aa);
  EXPECT_EQ(h_->read(h_->volume("snapshot/" + std::to_string(s1)), 0, 4096), aa);
}

class FullStoreTest : public ErrorTest {
 protected:
  EngineParams params() override {
    EngineParams p = ErrorTest::params();
    p.origin_size = 4 << 20;
    p.store_size = 3 << 20;  // room for fewer chunks than the origin has
    return p;
  }
};

TEST_P(FullStoreTest, FullStoreRefusesCopiesAndRecoversAfterDelete) {
  SnapshotId s = h_->snapshot();
  uint64_t total = h_->engine().status().store.data_chunks_total;
  ASSERT_LT(total * 4096, 4u << 20);
  // Fill the store chunk by chunk until a write needs a copy that cannot be made.
  Status st;
  uint64_t c = 0;
  for (; c < 1024 && st.is_ok(); ++c) st = h_->write(origin_, c * 4096, bytes(4096, c));
  ASSERT_EQ(st.code(), Code::kNoSpace) << st.to_string();
  EXPECT_EQ(st.to_errno(), ENOSPC);
  EXPECT_NE(st.message().find("full"), std::string::npos);
  --c;  // the chunk that failed
  // Overwrites of chunks already copied still work; reads too.
  EXPECT_TRUE(h_->write(origin_, 0, bytes(4096, 77)).is_ok());
  EXPECT_TRUE(h_->engine().status().failure.empty());
  // Deleting the snapshot frees the space in the background.
  ASSERT_TRUE(h_->engine().delete_snapshot(s).is_ok());
  for (int i = 0; i < 10000 && h_->engine().status().store.reclaim_active; ++i) h_->engine().poll();
  EXPECT_EQ(h_->engine().status().store.data_chunks_used, 0u);
  h_->snapshot();
  EXPECT_TRUE(h_->write(origin_, c * 4096, bytes(4096, 78)).is_ok());
  reopen();
}

// Damages each metadata block in use, one at a time: check must report it,
// and reads of the snapshot must either fail or return the right data.
class DamagedMetadata : public ::testing::TestWithParam<StoreFormat> {};
TEST_P(DamagedMetadata, EveryBlockIsDetectedAndNeverTrusted) {
  EngineParams p;
  p.format = GetParam();
  p.origin_size = 2 << 20;  // 512 chunks: exception tree of several leaves
  EngineHarness h(p);
  h.open();
  auto origin = h.volume("origin");
  auto before = bytes(p.origin_size, 1);
  ASSERT_TRUE(h.write(origin, 0, before).is_ok());
  h.snapshot(std::nullopt, "old");
  for (uint64_t c = 0; c < 512; c += 1) ASSERT_TRUE(h.write(origin, c * 4096 + 8, bytes(64, c)).is_ok());
  origin.reset();
  h.close();
  ASSERT_TRUE(h.check().empty());

  std::vector<uint8_t> image(h.store_mem().size());
  ASSERT_TRUE(h.store_mem().read(0, image.data(), image.size()).is_ok());
  std::vector<uint64_t> in_use;
  Layout layout;
  {
    TmOptions ro;
    ro.read_only = true;
    auto st = std::move(open_store(h.store_mem(), ro)).value();
    layout = st->layout();
    auto bits = std::move(st->tm().meta_space().committed_bits()).value();
    for (uint64_t b = 0; b < bits.size(); ++b)
      if (bits[b]) in_use.push_back(layout.meta_start + b);
  }
  ASSERT_GT(in_use.size(), 5u);
  // The four commit record copies too: damaging any one of them must lose
  // nothing and be reported.
  std::vector<uint64_t> commit_copies;
  for (int slot = 0; slot < 2; ++slot)
    for (int copy = 0; copy < kCommitCopies; ++copy) commit_copies.push_back(layout.commit_record_block(slot, copy));
  std::vector<uint64_t> targets = in_use;
  targets.insert(targets.end(), commit_copies.begin(), commit_copies.end());
  // The image's non-zero pages, found once: each round rebuilds the store
  // from them (scanning the whole 48 MiB image every round was 90% of this
  // test's time under ASan).
  std::vector<size_t> nonzero;
  for (size_t off = 0; off < image.size(); off += 4096)
    if (std::any_of(image.begin() + off, image.begin() + off + 4096, [](uint8_t x) { return x; }))
      nonzero.push_back(off);
  int reads_refused = 0;
  // Damage: bits flipped; torn (its second half from another block, as a
  // write cut in the middle leaves it); replaced by another block.
  const char* kinds[] = {"flipped", "torn", "replaced"};
  for (int kind = 0; kind < 3; ++kind)
  for (uint64_t blk : targets) {
    const bool is_commit = std::find(commit_copies.begin(), commit_copies.end(), blk) != commit_copies.end();
    SCOPED_TRACE(fmt::format("{} block {}{}", kinds[kind], blk, is_commit ? " (commit record copy)" : ""));
    MemoryDevice store(image.size(), "store");
    for (size_t off : nonzero) store.poke(off, image.data() + off, 4096);
    uint64_t other = blk == in_use.front() ? in_use.back() : in_use.front();
    if (is_commit) other = blk == commit_copies[0] ? commit_copies[2] : commit_copies[0];
    if (kind == 0) {
      std::vector<uint8_t> junk(64, 0x5a);
      store.poke(blk * kBlockSize + 1000, junk.data(), junk.size());
    } else if (kind == 1) {
      std::vector<uint8_t> half(image.begin() + other * kBlockSize + 2048, image.begin() + (other + 1) * kBlockSize);
      half[0] ^= 1;  // never identical by chance
      store.poke(blk * kBlockSize + 2048, half.data(), half.size());
    } else {
      store.poke(blk * kBlockSize, image.data() + other * kBlockSize, kBlockSize);
    }
    {
      auto checked = testing::check_report(store, /*commit_findings=*/true);
      ASSERT_TRUE(checked.is_ok()) << checked.status().to_string();
      const CheckReport& report = *checked;
      if (is_commit) {
        // The twin copy is intact: nothing lost, but never silent.
        EXPECT_TRUE(report.clean()) << report.problems()[0];
        ASSERT_FALSE(report.warnings().empty()) << "check missed the damaged commit record copy";
      } else {
        ASSERT_FALSE(report.clean()) << "check missed the damage";
        bool named = false;
        for (auto& pr : report.problems())
          named |= pr.find("checksum") != std::string::npos || pr.find("says it is block") != std::string::npos;
        EXPECT_TRUE(named) << report.problems()[0];
      }
    }
    EngineOptions eo;
    eo.threaded = false;
    auto e = Engine::open(h.origin_mem(), store, eo, make_sync_io_context());
    ASSERT_TRUE(e.is_ok());
    auto snap = (*e)->open_volume("snapshot/old");
    if (!snap.is_ok()) {
      EXPECT_FALSE(is_commit) << snap.status().to_string();
      EXPECT_EQ(snap.status().code(), Code::kCorruption) << snap.status().to_string();
      ++reads_refused;
      continue;
    }
    for (uint64_t c = 0; c < 512; ++c) {
      std::vector<uint8_t> got(4096);
      bool done = false;
      Status st;
      (*e)->submit(*snap, {IoRequest::Op::kRead, c * 4096, 4096, got.data(), false}, [&](Status x) {
        st = x;
        done = true;
      });
      while (!done) (*e)->poll();
      if (!st.is_ok()) {
        EXPECT_FALSE(is_commit) << st.to_string();
        EXPECT_EQ(st.to_errno(), EIO) << st.to_string();
        ++reads_refused;
        break;
      }
      ASSERT_TRUE(std::equal(got.begin(), got.end(), before.begin() + c * 4096)) << "chunk " << c << " read wrong data";
    }
  }
  EXPECT_GT(reads_refused, 0);
}

auto format_name = [](const auto& info) { return std::string(store_format_name(info.param)); };
INSTANTIATE_TEST_SUITE_P(Stores, ErrorTest, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask), format_name);
INSTANTIATE_TEST_SUITE_P(Stores, FullStoreTest, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         format_name);
INSTANTIATE_TEST_SUITE_P(Stores, DamagedMetadata, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         format_name);

}  // namespace
}  // namespace multisnap
