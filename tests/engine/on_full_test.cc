// EngineOptions::on_no_space: a write that finds the store full waits while
// its owner deletes snapshots (what `policy set --on-full delete-oldest`
// does) instead of failing, and fails with ENOSPC once nothing can be freed.
#include <gtest/gtest.h>

#include <deque>

#include "engine/engine_fixture.h"

namespace multisnap {
namespace {

using testing::EngineHarness;
using testing::EngineParams;

class EngineOnFullPolicy : public ::testing::TestWithParam<StoreFormat> {
 protected:
  // A store with room for fewer chunks than the origin has.
  EngineParams params() {
    EngineParams p;
    p.format = GetParam();
    p.origin_size = 4 << 20;
    p.store_size = 3 << 20;
    return p;
  }

  // Writes chunk c; while it waits, plays the daemon's part: when the hook
  // asked for space, deletes the oldest "automatic" snapshot (from this
  // thread, never from inside the hook).
  Status write_chunk(EngineHarness& h, const VolumeRef& v, uint64_t c) {
    std::vector<uint8_t> data(4096, fill(c, pass_));
    bool done = false;
    Status result;
    h.engine().submit(v, {IoRequest::Op::kWrite, c * 4096, 4096, data.data(), false}, [&](Status s) {
      result = s;
      done = true;
    });
    while (!done) {
      h.engine().poll();
      if (asked_ && !autos_.empty()) {
        asked_ = false;
        Status s = h.engine().delete_snapshot(autos_.front());
        EXPECT_TRUE(s.is_ok()) << s.to_string();
        autos_.pop_front();
        ++deleted_;
      }
    }
    return result;
  }

  // Eight passes over 300 chunks, an automatic snapshot every 75 chunks:
  // 2400 copies where the store holds about 500. Returns the first error.
  Status writer(EngineHarness& h) {
    auto origin = h.volume("origin");
    for (pass_ = 0; pass_ < 8; ++pass_)
      for (uint64_t c = 0; c < kChunks; ++c) {
        if (c % 75 == 0) autos_.push_back(h.snapshot());
        Status s = write_chunk(h, origin, c);
        if (!s.is_ok()) return s;
      }
    return Status::ok();
  }

  static constexpr uint64_t kChunks = 300;
  static uint8_t fill(uint64_t c, int pass) { return static_cast<uint8_t>(c * 7 + pass + 1); }
  int pass_ = 0;
  std::deque<SnapshotId> autos_;
  bool asked_ = false;
  int calls_ = 0, deleted_ = 0;
};

TEST_P(EngineOnFullPolicy, WriterKeepsRunningWhileOldestSnapshotsAreDeleted) {
  EngineParams p = params();
  p.on_no_space = [this] {
    ++calls_;
    if (autos_.empty()) return false;
    asked_ = true;
    return true;
  };
  EngineHarness h(p);
  h.open();
  // Not the writer's to delete: it keeps the first copy of every chunk
  // written (300), the automatic ones share the rest of the store.
  SnapshotId manual = h.snapshot(std::nullopt, "manual");
  Status s = writer(h);
  ASSERT_TRUE(s.is_ok()) << s.to_string() << " after " << calls_ << " calls, " << deleted_ << " deleted, "
                         << autos_.size() << " left";
  EXPECT_GT(deleted_, 0);
  EXPECT_GT(calls_, 0);
  auto found = h.engine().find_snapshot(std::to_string(manual));
  ASSERT_TRUE(found.is_ok());
  EXPECT_TRUE(found->has_value());
  // The newest automatic snapshot (taken at chunk 225 of the last pass)
  // and the manual one (before any write) read what they were taken of.
  auto snap = h.volume("snapshot/" + std::to_string(autos_.back()));
  EXPECT_EQ(h.read(snap, 299 * 4096, 4096), std::vector<uint8_t>(4096, fill(299, 6)));
  EXPECT_EQ(h.read(snap, 0, 4096), std::vector<uint8_t>(4096, fill(0, 7)));
  auto old = h.volume("snapshot/manual");
  EXPECT_EQ(h.read(old, 299 * 4096, 4096), std::vector<uint8_t>(4096, 0));
  old.reset();
  EXPECT_LT(autos_.size(), 32u);
  snap.reset();
  h.close();
  for (auto& problem : h.check()) ADD_FAILURE() << problem;
}

TEST_P(EngineOnFullPolicy, WithoutTheHookTheWriterFailsWithEnospc) {
  EngineHarness h(params());
  h.open();
  Status s = writer(h);
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.to_string();
  EXPECT_EQ(s.to_errno(), ENOSPC);
  EXPECT_EQ(deleted_, 0);
}

TEST_P(EngineOnFullPolicy, FailsWithEnospcOnceNothingIsLeftToDelete) {
  EngineParams p = params();
  p.on_no_space = [this] {
    ++calls_;
    return false;  // nothing the owner could delete
  };
  EngineHarness h(p);
  h.open();
  Status s = writer(h);
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.to_string();
  EXPECT_EQ(calls_, 1);
  EXPECT_TRUE(h.engine().status().failure.empty());
}

TEST_P(EngineOnFullPolicy, WaitIsBounded) {
  // The owner promises space and never frees any: the write still ends.
  EngineParams p = params();
  p.on_no_space = [this] {
    ++calls_;
    return true;
  };
  EngineHarness h(p);  // the devices; the engine is opened here with a short bound
  EngineOptions eo;
  eo.threaded = false;
  eo.on_no_space = p.on_no_space;
  eo.no_space_wait_ms = 300;
  auto e = Engine::open(h.origin_dev(), h.store_dev(), eo, make_sync_io_context());
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  auto origin = (*e)->open_volume("origin");
  ASSERT_TRUE(origin.is_ok());
  ASSERT_TRUE((*e)->create_snapshot(std::nullopt, "").is_ok());
  Status s;
  for (uint64_t c = 0; c < 1024 && s.is_ok(); ++c) {
    std::vector<uint8_t> data(4096, 9);
    bool done = false;
    (*e)->submit(*origin, {IoRequest::Op::kWrite, c * 4096, 4096, data.data(), false}, [&](Status r) {
      s = r;
      done = true;
    });
    while (!done) (*e)->poll();
  }
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.to_string();
  EXPECT_GT(calls_, 1);  // asked again at each retry
}

INSTANTIATE_TEST_SUITE_P(Stores, EngineOnFullPolicy, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         [](const auto& info) { return info.param == StoreFormat::kRange ? "range" : "bitmask"; });

}  // namespace
}  // namespace multisnap
