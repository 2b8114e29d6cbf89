// The copy pipeline at full depth (automatic copy slots: 1024 with 4 KiB
// chunks), with many requests in flight at once, small origin writes made
// by the engine thread itself (the default) and through the I/O context:
//  * OriginOrder: before every write that reaches the origin, a power cut
//    right after it is simulated: the origin with that write (and every
//    earlier one) landed, the store as its last flush left it. Every
//    snapshot must still read what it held when it was created, so an
//    origin write issued before the commit that preserves the old contents
//    is durable fails the test.
//  * CopyRuns: copies of adjacent chunks are one origin read and one store
//    write per run, and the snapshot keeps the old data.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "engine/engine.h"
#include "store/check_store.h"
#include "support/hooked_device.h"
#include "support/memory_device.h"
#include "support/test_io_context.h"
#include "engine/engine_fixture.h"

namespace multisnap {
namespace {

constexpr uint32_t kChunk = 4096;
constexpr uint64_t kOriginSize = 1 << 20;
constexpr uint64_t kStoreSize = 48 << 20;

struct PipelineCase {
  StoreFormat format;
  TestIo io;
  bool inline_origin = true;  // EngineOptions::inline_origin_write_max as default, or 0
};

class Pipeline : public ::testing::TestWithParam<PipelineCase> {
 protected:
  void SetUp() override {
    CreateOptions co;
    co.format = GetParam().format;
    co.chunk_size = kChunk;
    co.origin_size = kOriginSize;
    co.origin_path = "memory";
    ASSERT_TRUE(format_store(store_mem_, co).is_ok());
    ASSERT_TRUE(store_mem_.flush().is_ok());
  }
  std::unique_ptr<Engine> open_engine(BlockDevice& origin, BlockDevice& store, TestIo io, uint32_t slots) {
    EngineOptions eo;
    eo.threaded = false;
    eo.cache_bytes = 1 << 20;
    eo.copy_slots = slots;
    if (!GetParam().inline_origin) eo.inline_origin_write_max = 0;
    auto e = Engine::open(origin, store, eo, make_test_io_context(io, 7));
    EXPECT_TRUE(e.is_ok()) << e.status().to_string();
    return e.is_ok() ? std::move(e).value() : nullptr;
  }
  // Submits every request at once, then runs the engine until all are done.
  struct Req {
    uint64_t off, len;
    std::vector<uint8_t> data;
    bool fua = false;
    bool flush = false;
  };
  void run_batch(Engine& e, const VolumeRef& v, std::vector<Req>& batch) {
    size_t done = 0;
    for (Req& r : batch) {
      IoRequest io{r.flush ? IoRequest::Op::kFlush : IoRequest::Op::kWrite, r.off, r.len,
                   r.flush ? nullptr : r.data.data(), r.fua};
      e.submit(v, io, [&done](Status s) {
        EXPECT_TRUE(s.is_ok()) << s.to_string();
        ++done;
      });
    }
    while (done < batch.size()) e.poll();
  }
  std::vector<uint8_t> read(Engine& e, const std::string& name, uint64_t off, uint64_t len) {
    auto v = e.open_volume(name);
    EXPECT_TRUE(v.is_ok()) << name;
    std::vector<uint8_t> out(len);
    if (!v.is_ok()) return out;
    bool done = false;
    e.submit(*v, {IoRequest::Op::kRead, off, len, out.data(), false}, [&](Status s) {
      EXPECT_TRUE(s.is_ok()) << s.to_string();
      done = true;
    });
    while (!done) e.poll();
    return out;
  }

  MemoryDevice origin_mem_{kOriginSize, "origin"};
  MemoryDevice store_mem_{kStoreSize, "store"};
};

TEST_P(Pipeline, NoOriginWriteBeforeItsCommitIsDurable) {
  HookedDevice origin(origin_mem_);
  std::map<SnapshotId, std::vector<uint8_t>> snapshots;  // created (durable): what each must read
  std::vector<uint8_t> model(kOriginSize, 0);
  uint64_t checks = 0, preserved = 0;
  bool failed = false;
  origin.on_write([&](uint64_t off, uint64_t len, const uint8_t* data) {
    if (failed) return;
    ++checks;
    // The power goes right after this write: it and all earlier origin
    // writes landed; the store holds only what it flushed.
    auto o = origin_mem_.copy_image(false);
    std::vector<uint8_t> bytes = data ? std::vector<uint8_t>(data, data + len) : std::vector<uint8_t>(len, 0);
    o->poke(off, bytes.data(), len);
    auto s = store_mem_.copy_image(true);
    auto e = open_engine(*o, *s, TestIo::kSync, 8);
    if (!e) {
      failed = true;
      ADD_FAILURE() << "the store did not open after a cut at an origin write";
      return;
    }
    const uint64_t first = off / kChunk * kChunk;
    const uint64_t end = std::min(kOriginSize, (off + len + kChunk - 1) / kChunk * kChunk);
    for (auto& [id, want] : snapshots) {
      auto got = read(*e, "snapshot/" + std::to_string(id), first, end - first);
      if (!std::equal(got.begin(), got.end(), want.begin() + static_cast<long>(first))) {
        failed = true;
        ADD_FAILURE() << "origin write of " << len << " bytes at " << off << " reached the origin before the "
                      << "commit preserving snapshot " << id << "'s old contents was durable";
        return;
      }
      // Counts the checks where the write changed what the snapshot holds
      // (so its old contents had to be preserved first).
      if (!std::equal(bytes.begin(), bytes.end(), want.begin() + static_cast<long>(off))) ++preserved;
    }
  });

  auto engine = open_engine(origin, store_mem_, GetParam().io, 0);  // 0: automatic, full depth
  ASSERT_TRUE(engine);
  auto vol = engine->open_volume("origin");
  ASSERT_TRUE(vol.is_ok());
  std::mt19937_64 rng(42);
  for (int round = 0; round < 5 && !failed; ++round) {
    auto snap = engine->create_snapshot(std::nullopt, "");
    ASSERT_TRUE(snap.is_ok()) << snap.status().to_string();
    snapshots[snap->id] = model;
    // A batch of non-overlapping origin writes: every 64 KiB region of the
    // volume, in random order, gets either one write of all of it (16
    // adjacent chunks: a run) or three writes inside it; some FUA, and a
    // flush among them.
    std::vector<Req> batch;
    std::vector<uint64_t> regions(kOriginSize / (16 * kChunk));
    for (size_t i = 0; i < regions.size(); ++i) regions[i] = i * 16 * kChunk;
    std::shuffle(regions.begin(), regions.end(), rng);
    for (uint64_t base : regions) {
      if (rng() % 2 == 0) {
        batch.push_back({base, 16 * kChunk, testing::random_bytes(rng, 16 * kChunk), rng() % 8 == 0});
      } else {
        // Three writes in separate quarters: a whole chunk, an unaligned
        // piece, a piece across two chunks.
        batch.push_back({base + kChunk, kChunk, testing::random_bytes(rng, kChunk), false});
        batch.push_back({base + 4 * kChunk + 512, 1024, testing::random_bytes(rng, 1024), rng() % 4 == 0});
        batch.push_back({base + 9 * kChunk - 2048, 4096, testing::random_bytes(rng, 4096), false});
      }
      if (batch.size() == 9) batch.push_back({0, 0, {}, false, true});
    }
    for (Req& r : batch)
      if (!r.flush) std::copy(r.data.begin(), r.data.end(), model.begin() + static_cast<long>(r.off));
    run_batch(*engine, *vol, batch);
    // Everything is as written.
    auto now = read(*engine, "origin", 0, kOriginSize);
    ASSERT_TRUE(now == model);
    for (auto& [id, want] : snapshots) ASSERT_TRUE(read(*engine, "snapshot/" + std::to_string(id), 0, kOriginSize) == want);
  }
  auto c = engine->status().counters;
  fprintf(stderr, "%llu origin writes checked, %llu of them needed a preserved copy; %llu copy jobs in %llu runs, %llu commits\n",
          (unsigned long long)checks, (unsigned long long)preserved, (unsigned long long)c.copy_jobs,
          (unsigned long long)c.copy_runs, (unsigned long long)c.commits);
  EXPECT_GT(preserved, 100u) << "too few origin writes needed a copy: the test would prove little";
  EXPECT_LT(c.copy_runs * 4, c.copy_jobs) << "adjacent copies did not run together";
  if (GetParam().inline_origin)
    EXPECT_GT(c.origin_writes_inline, 40u) << "the engine thread wrote little origin data itself";
  else
    EXPECT_EQ(c.origin_writes_inline, 0u);
  vol = Result<VolumeRef>(Status(Code::kShutdown, "closed"));
  engine.reset();
  for (auto& p : testing::check_store(store_mem_)) ADD_FAILURE() << p;
}

// A sequential stream after a snapshot: 1 MiB written as 16 requests of
// 64 KiB, all in flight at once. With 4 KiB chunks that is 256 copy jobs;
// they must go out as a handful of runs (one origin read and one store
// write each when the store chunks are consecutive), and the snapshot must
// read the old data.
TEST_P(Pipeline, AdjacentCopiesRunAsOneReadAndOneWrite) {
  std::mt19937_64 rng(3);
  auto before = testing::random_bytes(rng, kOriginSize);
  ASSERT_TRUE(origin_mem_.write(0, before.data(), before.size()).is_ok());
  ASSERT_TRUE(origin_mem_.flush().is_ok());
  auto engine = open_engine(origin_mem_, store_mem_, GetParam().io, 0);
  ASSERT_TRUE(engine);
  auto vol = engine->open_volume("origin");
  ASSERT_TRUE(vol.is_ok());
  auto snap = engine->create_snapshot(std::nullopt, "");
  ASSERT_TRUE(snap.is_ok());
  const uint64_t store_writes = store_mem_.write_count();
  std::vector<Req> batch;
  for (uint64_t off = 0; off < kOriginSize; off += 16 * kChunk)
    batch.push_back({off, 16 * kChunk, testing::random_bytes(rng, 16 * kChunk)});
  run_batch(*engine, *vol, batch);
  auto c = engine->status().counters;
  EXPECT_EQ(c.copy_jobs, kOriginSize / kChunk);
  EXPECT_EQ(c.chunks_copied, kOriginSize / kChunk);
  // All 256 copies fit in the slots: the whole volume is one run.
  EXPECT_EQ(c.copy_runs, 1u);
  // One data write for the run, then the commit's metadata and records:
  // far fewer store writes than chunks copied.
  EXPECT_LT(store_mem_.write_count() - store_writes, 64u);
  EXPECT_TRUE(read(*engine, "snapshot/" + std::to_string(snap->id), 0, kOriginSize) == before);
  std::vector<uint8_t> now;
  for (Req& r : batch) now.insert(now.end(), r.data.begin(), r.data.end());
  EXPECT_TRUE(read(*engine, "origin", 0, kOriginSize) == now);
  vol = Result<VolumeRef>(Status(Code::kShutdown, "closed"));
  engine.reset();
  for (auto& p : testing::check_store(store_mem_)) ADD_FAILURE() << p;
}

INSTANTIATE_TEST_SUITE_P(Stores, Pipeline,
                         ::testing::Values(PipelineCase{StoreFormat::kRange, TestIo::kSync},
                                           PipelineCase{StoreFormat::kRange, TestIo::kReordering},
                                           PipelineCase{StoreFormat::kBitmask, TestIo::kSync},
                                           PipelineCase{StoreFormat::kBitmask, TestIo::kReordering},
                                           PipelineCase{StoreFormat::kRange, TestIo::kReordering, false},
                                           PipelineCase{StoreFormat::kBitmask, TestIo::kReordering, false}),
                         [](const auto& info) {
                           return std::string(store_format_name(info.param.format)) + "_" +
                                  (info.param.io == TestIo::kSync ? "sync" : "reorder") +
                                  (info.param.inline_origin ? "" : "_origin_through_io");
                         });

}  // namespace
}  // namespace multisnap
