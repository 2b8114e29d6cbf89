// Growing a store (format 4): the data area takes in space added to the
// device, in one commit; the new chunks serve data and metadata alike; a
// power cut at any point of a grow leaves the old size or the new one with
// nothing lost; stores without room refuse with a sentence. Both stores.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <random>

#include "io/file_device.h"
#include "meta/transaction.h"
#include "store/check_store.h"
#include "store/exception_store.h"
#include "store/store_fixture.h"
#include "store/store_format.h"
#include "support/fault_device.h"
#include "support/memory_device.h"

namespace multisnap {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class GrowTest : public testing::SpaceFixture {
 protected:
  // A small metadata pool: metadata borrows from the data area early.
  void format(uint64_t device, uint64_t max_size, uint32_t version = kFormatVersion) {
    CreateOptions o;
    o.metadata_size = 64 << 10;
    if (max_size) o.max_store_size = max_size;
    o.format_version = version;
    SpaceFixture::format(device, o);
  }
  // Origin writes (a snapshot every 50) from *next until the store is full.
  void fill(uint64_t* next) {
    int failures = 0;
    for (uint64_t round = 0; failures < 5; ++round) {
      const bool take = round % 50 == 0 && snapshots_ < 60;
      Status s = take ? store_->create_snapshot(std::nullopt, "s" + std::to_string(names_++), 1).status()
                      : origin_write(*next);
      if (s.is_ok()) {
        if (take) ++snapshots_;
        else ++*next;
      } else {
        ASSERT_EQ(s.code(), Code::kNoSpace) << s.to_string();
        ++failures;
      }
      ASSERT_TRUE(store_->tm().status().is_ok()) << "a full store must not fail";
      if (round % 100 == 0) {
        ASSERT_TRUE(store_->commit().is_ok());
      }
    }
  }
  // Every origin chunk below `upto` is preserved for the oldest snapshot.
  void expect_preserved(uint64_t upto) {
    auto oldest = store_->find_snapshot(SnapshotId{1});
    ASSERT_TRUE(oldest.is_ok() && oldest->has_value());
    for (uint64_t c = 0; c < upto; ++c) {
      auto m = store_->lookup(c, **oldest, false);
      ASSERT_TRUE(m.is_ok());
      ASSERT_EQ(m->kind, ChunkMapping::Kind::kStore) << "chunk " << c;
    }
  }
  int snapshots_ = 0;
  int names_ = 0;
};

TEST_P(GrowTest, LayoutHasRoomForTheLargestSize) {
  format(8 * kMiB, 64 * kMiB);
  EXPECT_TRUE(layout().growable());
  EXPECT_GE(layout().data_start + layout().capacity_chunks() * layout().chunk_size, 64 * kMiB - layout().data_start);
  EXPECT_LE(layout().data_start + layout().data_chunks * layout().chunk_size, 8 * kMiB);
  // The default: 16 times the size at create.
  format(8 * kMiB, 0);
  LayoutRequest req;
  req.store_size = 8 * kMiB;
  req.chunk_size = 4096;
  req.origin_size = 1 << 30;
  auto l = compute_layout(req);
  ASSERT_TRUE(l.is_ok());
  EXPECT_GE(l->data_start + l->capacity_chunks() * l->chunk_size, 16 * 8 * kMiB - l->data_start);
  req.max_store_size = 4 * kMiB;
  EXPECT_EQ(compute_layout(req).status().code(), Code::kInvalidArgument) << "below the store's size";
  req.max_store_size = 1ull << 51;
  EXPECT_EQ(compute_layout(req).status().code(), Code::kInvalidArgument) << "over 1 PiB";
}

// A full store grows: the writes that failed succeed, the new chunks take
// data and borrowed metadata, everything preserved stays, and a reopen finds
// the new size in the commit record.
TEST_P(GrowTest, AFullStoreGrowsAndUsesTheNewSpace) {
  format(8 * kMiB, 64 * kMiB);
  uint64_t next = 0;
  fill(&next);
  expect_clean("full");
  const uint64_t old_chunks = layout().data_chunks;
  const uint64_t full_at = next;
  EXPECT_LT(store_->tm().room_blocks(), store_->tm().delete_reserve_blocks() + 128) << "full";

  auto g = grow_store(*store_, *dev_, 24 * kMiB);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(g->old_bytes, 8 * kMiB);
  EXPECT_EQ(g->new_bytes, 24 * kMiB);
  EXPECT_EQ(g->old_chunks, old_chunks);
  EXPECT_GT(g->new_chunks, old_chunks + 16 * kMiB / 4096 - 2);
  EXPECT_EQ(dev_->size(), 24 * kMiB);
  ASSERT_TRUE(store_->commit().is_ok());
  expect_clean("grown");

  fill(&next);  // into the new space
  EXPECT_GT(next, full_at + 2000) << "the new space holds copies";
  expect_clean("full again");
  reopen();
  EXPECT_EQ(layout().data_chunks, g->new_chunks);
  EXPECT_EQ(layout().store_size, 24 * kMiB);
  EXPECT_EQ(store_->stats().max_store_bytes, layout().data_start + layout().capacity_chunks() * 4096);
  expect_preserved(full_at);
  // The new chunks are in use (data, or borrowed by metadata).
  uint64_t in_new = 0;
  ASSERT_TRUE(store_->tm().data_space().for_each_committed(old_chunks, [&](uint64_t) { ++in_new; }).is_ok());
  EXPECT_GT(in_new, (g->new_chunks - old_chunks) * 9 / 10);
}

TEST_P(GrowTest, RefusesWhatItCannotDo) {
  format(8 * kMiB, 32 * kMiB);
  const uint64_t max = layout().data_start + layout().capacity_chunks() * 4096;
  auto too_big = grow_store(*store_, *dev_, max + 4096);
  EXPECT_EQ(too_big.status().code(), Code::kInvalidArgument);
  EXPECT_NE(too_big.status().to_string().find("--max-store-size"), std::string::npos) << too_big.status().to_string();
  EXPECT_EQ(grow_store(*store_, *dev_, 4 * kMiB).status().code(), Code::kInvalidArgument) << "a store never shrinks";
  EXPECT_EQ(grow_store(*store_, *dev_, 0).status().code(), Code::kInvalidArgument) << "the device did not grow";
  EXPECT_EQ(dev_->size(), 8 * kMiB) << "nothing changed";
  // The device grown by someone else: 0 takes its size.
  ASSERT_TRUE(dev_->resize(12 * kMiB).is_ok());
  auto g = grow_store(*store_, *dev_, 0);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(g->new_bytes, 12 * kMiB);
  // Up to the room made at create, exactly.
  ASSERT_TRUE(grow_store(*store_, *dev_, max).is_ok());
  expect_clean("at the maximum");
  reopen();
  EXPECT_EQ(layout().data_chunks, layout().capacity_chunks());

  // A version-3 store has no room: refused with a sentence.
  format(8 * kMiB, 0, 3);
  auto v3 = grow_store(*store_, *dev_, 16 * kMiB);
  EXPECT_EQ(v3.status().code(), Code::kNotSupported);
  EXPECT_NE(v3.status().to_string().find("send and receive"), std::string::npos);
  EXPECT_EQ(dev_->size(), 8 * kMiB);
  expect_clean("version 3");
}

// A device smaller than the size the commit record claims (a truncated
// file) is refused with a sentence, never read past its end.
TEST_P(GrowTest, AShrunkDeviceIsRefused) {
  format(8 * kMiB, 32 * kMiB);
  ASSERT_TRUE(grow_store(*store_, *dev_, 16 * kMiB).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  store_.reset();
  MemoryDevice smaller(12 * kMiB, "smaller");
  std::vector<uint8_t> buf(12 * kMiB);
  ASSERT_TRUE(dev_->read(0, buf.data(), buf.size()).is_ok());
  ASSERT_TRUE(smaller.write(0, buf.data(), buf.size()).is_ok());
  ASSERT_TRUE(smaller.flush().is_ok());
  auto r = open_store(smaller, {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().to_string().find("truncated"), std::string::npos) << r.status().to_string();
}

// Power cuts anywhere in a grow and the commit after it: the store opens at
// the old size or the new one, check is clean, and what the last durable
// commit preserved is there.
TEST_P(GrowTest, PowerCutsDuringAGrow) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed() + 7);
  int old_size = 0, new_size = 0;
  for (int run = 0; run < 40; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    snapshots_ = 0;
    format(8 * kMiB, 32 * kMiB);
    uint64_t next = 0;
    fill(&next);
    ASSERT_TRUE(store_->commit().is_ok());
    const uint64_t durable = next;
    const uint64_t old_chunks = layout().data_chunks;
    FaultDevice faulty(*dev_);
    reopen(&faulty);
    // The power goes at the nth write or flush from here (a dead disk after).
    FaultRule rule;
    rule.nth = 1 + rng() % 40;
    rule.sticky = true;
    faulty.add_rule(rule);
    Status s = grow_store(*store_, faulty, 16 * kMiB).status();
    for (int i = 0; s.is_ok() && i < 300; ++i) {
      s = origin_write(next);
      if (s.is_ok()) ++next;
      if (s.is_ok() && i % 60 == 59) s = store_->commit();
    }
    if (s.is_ok()) s = store_->commit();
    store_.reset();
    dev_->crash(rng);
    reopen();
    ASSERT_TRUE(layout().data_chunks == old_chunks || layout().store_size == 16 * kMiB)
        << layout().data_chunks << " chunks, " << layout().store_size << " bytes";
    (layout().data_chunks == old_chunks ? old_size : new_size)++;
    expect_clean("after the power cut");
    expect_preserved(durable);
  }
  EXPECT_GT(old_size, 0) << "no power cut came before the grow's commit";
  EXPECT_GT(new_size, 0) << "no power cut came after the grow's commit";
}

// A grow turns the bits past a space map's end into free units, so they must
// be 0: check reports one that is not, and grow refuses to go on.
TEST_P(GrowTest, CheckFindsBitsPastTheEnd) {
  format(8 * kMiB, 32 * kMiB);
  ASSERT_TRUE(store_->create_snapshot(std::nullopt, "a", 1).is_ok());
  for (uint64_t c = 0; c < 50; ++c) ASSERT_TRUE(origin_write(c).is_ok());
  ASSERT_TRUE(store_->commit().is_ok());
  SpaceMap& data = store_->tm().data_space();
  const uint64_t end = data.total();
  const uint32_t i = static_cast<uint32_t>(end / kBitsPerBitmap);
  ASSERT_TRUE(data.bitmap_written(i));
  const uint64_t block = data.bitmap_block(i, data.committed_slot(i));
  const uint64_t seed = store_->tm().superblock().checksum_seed();
  store_.reset();
  std::vector<uint8_t> buf(kBlockSize);
  ASSERT_TRUE(dev_->read(block * kBlockSize, buf.data(), buf.size()).is_ok());
  const uint64_t bit = end % kBitsPerBitmap + 3;
  buf[sizeof(BlockHeaderDisk) + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
  seal_block(buf.data(), seed);
  dev_->poke(block * kBlockSize, buf.data(), buf.size());
  bool found = false;
  for (auto& p : testing::check_store(*dev_)) found |= p.find("past its end") != std::string::npos;
  EXPECT_TRUE(found) << "check did not report a unit in use past the data space's end";
  reopen();
  auto g = grow_store(*store_, *dev_, 16 * kMiB);
  EXPECT_EQ(g.status().code(), Code::kCorruption) << g.status().to_string();
  EXPECT_EQ(store_->layout().data_chunks, end) << "not grown";
}

// Bytes the host filesystem holds for a file (a sparse file's real cost).
uint64_t allocated_bytes(const char* path) {
  struct stat st;
  EXPECT_EQ(::stat(path, &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// The room to grow costs no space on a sparse file: open preallocates the
// bitmaps in service, and a grow those it brings into service.
TEST(GrowFile, RoomToGrowStaysSparse) {
  char path[] = "/tmp/multisnap-grow-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  FileDeviceOptions fo;
  fo.create_size = 128 * kMiB;
  auto dev = FileDevice::open(path, fo);
  ASSERT_TRUE(dev.is_ok());
  ASSERT_EQ(::truncate(path, 128 * kMiB), 0);
  dev = FileDevice::open(path);
  ASSERT_TRUE(dev.is_ok());
  CreateOptions o;
  o.chunk_size = 4096;
  o.origin_size = 1 << 30;
  o.metadata_size = 1 * kMiB;
  o.max_store_size = 128ull << 30;  // 2 x 1033 metadata and data bitmaps: 16 MiB if allocated
  o.origin_path = "/dev/null";
  Status made = format_store(**dev, o);
  ASSERT_TRUE(made.is_ok()) << made.to_string();
  auto allocated = [&] { return allocated_bytes(path); };
  {
    auto st = open_store(**dev, {});
    ASSERT_TRUE(st.is_ok()) << st.status().to_string();
    EXPECT_LT(allocated(), 4 * kMiB) << "the room to grow was allocated";
    auto g = grow_store(**st, **dev, 512 * kMiB);
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    ASSERT_TRUE((*st)->commit().is_ok());
    struct stat sb;
    ASSERT_EQ(::stat(path, &sb), 0);
    EXPECT_EQ(static_cast<uint64_t>(sb.st_size), 512 * kMiB);
    EXPECT_LT(allocated(), 4 * kMiB);
  }
  for (auto& p : testing::check_store(**dev)) ADD_FAILURE() << p;
  // resize: 0 takes the size now, it never shrinks.
  ASSERT_EQ(::truncate(path, 600 * kMiB), 0);
  auto now = (*dev)->resize(0);
  ASSERT_TRUE(now.is_ok());
  EXPECT_EQ(*now, 600 * kMiB);
  EXPECT_EQ((*dev)->size(), 600 * kMiB);
  EXPECT_EQ(*(*dev)->resize(100 * kMiB), 600 * kMiB);
  ::unlink(path);
}

// Churn on a sparse store file: snapshots made, origin chunks copied, the
// snapshots deleted and reclaimed, with a metadata pool so small that the
// metadata borrows data chunks and gives them back. The store file must
// stay about as allocated as the peak use (space_map.h, the frontier); the
// next-fit cursor used to sweep the data area, and every 16 MiB group it
// passed was preallocated for good.
TEST(SparseFile, ChurnKeepsTheStoreFileSparse) {
  char path[] = "/tmp/multisnap-churn-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ASSERT_EQ(::truncate(path, 1024 * kMiB), 0);
  auto dev = FileDevice::open(path);
  ASSERT_TRUE(dev.is_ok());
  CreateOptions o;
  o.chunk_size = 65536;
  o.origin_size = 1 << 30;
  o.metadata_size = 256 * 1024;  // 64 blocks: the metadata soon borrows data chunks
  o.origin_path = "/dev/null";
  ASSERT_TRUE(format_store(**dev, o).is_ok());
  auto allocated = [&] { return allocated_bytes(path); };
  auto st = open_store(**dev, {});
  ASSERT_TRUE(st.is_ok()) << st.status().to_string();
  ExceptionStore& store = **st;
  const uint64_t base = allocated();
  uint64_t peak_chunks = 0;
  for (int round = 0; round < 150; ++round) {
    auto s = store.create_snapshot(std::nullopt, "", 1);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    for (uint64_t c = 0; c < 8; ++c) {  // 8 origin chunks copied for it
      store.reset_query(round * 8 + c);
      for (;;) {
        auto more = store.query_next_remap();
        ASSERT_TRUE(more.is_ok());
        if (!*more) break;
        CopyDescriptor d;
        ASSERT_TRUE(store.add_next_remap(&d).is_ok());
      }
    }
    ASSERT_TRUE(store.commit().is_ok());
    peak_chunks = std::max(peak_chunks, store.stats().data_chunks_used);
    ASSERT_TRUE(store.delete_snapshot(s->id).is_ok());
    ASSERT_TRUE(store.commit().is_ok());
    while (store.reclaim_pending()) {
      ASSERT_TRUE(store.reclaim_step(1000).is_ok());
      ASSERT_TRUE(store.commit().is_ok());
    }
  }
  // 1,200 chunks (75 MiB) went through the store; at most a few were in use
  // at once. One 16 MiB preallocation group is all it needs.
  EXPECT_LT(peak_chunks, 64u);
  EXPECT_LE(allocated() - base, 16 * kMiB) << "the store file lost its sparseness";
  st->reset();
  for (auto& p : testing::check_store(**dev)) ADD_FAILURE() << p;
  ::unlink(path);
}

INSTANTIATE_TEST_SUITE_P(Stores, GrowTest, ::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                         [](const auto& info) { return std::string(store_format_name(info.param)); });

}  // namespace
}  // namespace multisnap
