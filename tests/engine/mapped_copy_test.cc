// Copies from the origin written straight from the origin's mapped page
// cache (EngineOptions::map_origin, docs/design.md section 3): snapshots
// must read what the origin held, whether a copy took the mapping (pages in
// memory) or read the chunk into a slot buffer (pages not in memory), with
// every kind of I/O context, both stores and a short last chunk.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <random>

#include "engine/engine.h"
#include "io/file_device.h"
#include "io/test_files.h"
#include "store/check_store.h"
#include "support/test_io_context.h"

namespace multisnap {
namespace {

struct MappedParams {
  TestIo io;
  StoreFormat format;
  bool map;
};

class MappedCopyTest : public ::testing::TestWithParam<MappedParams> {
 protected:
  static constexpr uint32_t kChunk = 64 << 10;
  // Not a multiple of the chunk: the last chunk is short, and takes the
  // read (zeros after the end of the volume).
  static constexpr uint64_t kSize = (4ull << 20) + 12288;

  void SetUp() override {
    FileDeviceOptions fo;
    fo.create = true;
    fo.create_size = kSize;
    origin_ = std::move(FileDevice::open(dir_.file("origin"), fo)).value();
    fo.create_size = 64ull << 20;
    fo.direct_writes = true;
    store_ = std::move(FileDevice::open(dir_.file("store"), fo)).value();
    CreateOptions co;
    co.format = GetParam().format;
    co.chunk_size = kChunk;
    co.origin_size = kSize;
    co.origin_path = dir_.file("origin");
    ASSERT_TRUE(format_store(*store_, co).is_ok());
    EngineOptions eo;
    eo.threaded = false;
    eo.copy_slots = 16;
    eo.map_origin = GetParam().map;
    auto e = Engine::open(*origin_, *store_, eo, make_test_io_context(GetParam().io, 7));
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    engine_ = std::move(e).value();
    origin_vol_ = *engine_->open_volume("origin");
  }

  Status io(const VolumeRef& v, IoRequest::Op op, uint64_t off, uint64_t len, uint8_t* buf) {
    bool done = false;
    Status result;
    engine_->submit(v, {op, off, len, buf, false}, [&](Status s) {
      result = s;
      done = true;
    });
    while (!done) engine_->poll();
    return result;
  }
  std::vector<uint8_t> read(const VolumeRef& v) {
    std::vector<uint8_t> out(kSize);
    EXPECT_TRUE(io(v, IoRequest::Op::kRead, 0, kSize, out.data()).is_ok());
    return out;
  }
  // A sequential 1 MiB write (16 chunks: one copy run of 16 jobs), then
  // 4 KiB into every chunk (a first write after the snapshot for each chunk
  // outside that megabyte).
  void first_writes(std::vector<uint8_t>& model, uint8_t salt) {
    std::mt19937_64 rng(salt);
    std::vector<uint8_t> mib(1 << 20);
    for (auto& b : mib) b = static_cast<uint8_t>(rng());
    std::copy(mib.begin(), mib.end(), model.begin() + (1 << 20));
    ASSERT_TRUE(io(origin_vol_, IoRequest::Op::kWrite, 1 << 20, mib.size(), mib.data()).is_ok());
    for (uint64_t c = 0; c * kChunk < kSize; ++c) {
      uint64_t off = c * kChunk + (rng() % 8) * 4096;
      if (off + 4096 > kSize) off = kSize - 4096;
      std::vector<uint8_t> d(4096, static_cast<uint8_t>(salt + c));
      std::copy(d.begin(), d.end(), model.begin() + static_cast<long>(off));
      ASSERT_TRUE(io(origin_vol_, IoRequest::Op::kWrite, off, d.size(), d.data()).is_ok());
    }
  }
  // Drops the origin's pages from the page cache (written back first).
  bool evict_origin() {
    origin_->drop_mapped_pages();  // pages mapped here cannot be evicted
    if (::fdatasync(origin_->fd()) != 0) return false;
    (void)::posix_fadvise(origin_->fd(), 0, 0, POSIX_FADV_DONTNEED);
    // No read-ahead from here on: a copy that reads its chunk must not
    // bring the next chunks in (they would then take the mapping).
    (void)::posix_fadvise(origin_->fd(), 0, 0, POSIX_FADV_RANDOM);
    return !origin_->mapped_resident(0, kSize & ~uint64_t{4095}) || origin_->map_read() == nullptr;
  }

  testing::TempDir dir_;
  std::unique_ptr<FileDevice> origin_, store_;
  std::unique_ptr<Engine> engine_;
  VolumeRef origin_vol_;
};

TEST_P(MappedCopyTest, SnapshotsReadWhatTheOriginHeld) {
  std::vector<uint8_t> origin(kSize);
  std::mt19937_64 rng(3);
  for (auto& b : origin) b = static_cast<uint8_t>(rng());
  ASSERT_TRUE(io(origin_vol_, IoRequest::Op::kWrite, 0, kSize, origin.data()).is_ok());

  // Pages in memory (just written): copies take the mapping when asked to.
  auto s1 = engine_->create_snapshot(std::nullopt, "one");
  ASSERT_TRUE(s1.is_ok());
  const std::vector<uint8_t> at_s1 = origin;
  first_writes(origin, 11);
  auto c = engine_->status().counters;
  EXPECT_GT(c.copy_jobs, c.copy_runs) << "no run of several chunks";
  if (GetParam().map) {
    // Every run but the short last chunk's: their pages were just written.
    EXPECT_EQ(c.copy_runs_mapped, c.copy_runs - 1);
  } else {
    EXPECT_EQ(c.copy_runs_mapped, 0u);
  }
  auto v1 = *engine_->open_volume("snapshot/" + std::to_string(s1->id));
  EXPECT_EQ(read(v1), at_s1);
  EXPECT_EQ(read(origin_vol_), origin);

  // Pages not in memory: copies read the chunk instead (no mapping fault
  // on the engine thread), and hold the same bytes.
  auto s2 = engine_->create_snapshot(std::nullopt, "two");
  ASSERT_TRUE(s2.is_ok());
  const std::vector<uint8_t> at_s2 = origin;
  const bool evicted = evict_origin();
  const auto before = engine_->status().counters;
  first_writes(origin, 57);
  const auto after = engine_->status().counters;
  // Pages not in memory: every copy read its chunk.
  EXPECT_GT(after.copy_runs, before.copy_runs);
  if (evicted) {
    EXPECT_EQ(after.copy_runs_mapped, before.copy_runs_mapped) << "a copy took the mapping of pages not in memory";
  }
  auto v2 = *engine_->open_volume("snapshot/" + std::to_string(s2->id));
  EXPECT_EQ(read(v2), at_s2);
  EXPECT_EQ(read(v1), at_s1);
  EXPECT_EQ(read(origin_vol_), origin);

  v1.reset();
  v2.reset();
  origin_vol_.reset();
  engine_.reset();
  // The store is sound, and after a reopen the snapshots still hold.
  for (const std::string& p : testing::check_store(*store_)) ADD_FAILURE() << p;
  EngineOptions eo;
  eo.threaded = false;
  auto e = Engine::open(*origin_, *store_, eo, make_test_io_context(TestIo::kSync, 1));
  ASSERT_TRUE(e.is_ok());
  engine_ = std::move(e).value();
  EXPECT_EQ(read(*engine_->open_volume("snapshot/" + std::to_string(s1->id))), at_s1);
  EXPECT_EQ(read(*engine_->open_volume("snapshot/" + std::to_string(s2->id))), at_s2);
}

std::vector<MappedParams> params() {
  std::vector<MappedParams> v;
  for (TestIo io : {TestIo::kUring, TestIo::kSync, TestIo::kReordering})
    for (StoreFormat f : {StoreFormat::kRange, StoreFormat::kBitmask}) v.push_back({io, f, true});
  v.push_back({TestIo::kUring, StoreFormat::kRange, false});
  return v;
}

INSTANTIATE_TEST_SUITE_P(All, MappedCopyTest, ::testing::ValuesIn(params()), [](const auto& info) {
  const MappedParams& p = info.param;
  std::string io = p.io == TestIo::kUring ? "Uring" : p.io == TestIo::kSync ? "Sync" : "Reordering";
  return io + (p.format == StoreFormat::kRange ? "Range" : "Bitmask") + (p.map ? "Mapped" : "Read");
});

}  // namespace
}  // namespace multisnap
