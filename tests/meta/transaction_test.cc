#include "meta/transaction.h"

#include <gtest/gtest.h>

#include "support/fault_device.h"
#include "meta/meta_fixture.h"

namespace multisnap {
namespace {

// A block whose payload holds `value` everywhere.
uint64_t write_value_block(TransactionManager& tm, uint8_t value) {
  auto b = tm.new_block(BlockType::kBTreeNode);
  EXPECT_TRUE(b.is_ok());
  std::memset(b->mutable_data() + sizeof(BlockHeaderDisk), value, kBlockPayload);
  return b->blocknr();
}

uint8_t read_value(TransactionManager& tm, uint64_t nr) {
  auto b = tm.read(nr, BlockType::kBTreeNode);
  EXPECT_TRUE(b.is_ok()) << b.status().to_string();
  return b.is_ok() ? b->data()[100] : 0;
}

class TransactionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(TransactionManager::format(dev_, testing::make_superblock(dev_.size())).is_ok());
  }
  MemoryDevice dev_{64 << 20};
};

TEST_F(TransactionTest, FreshStoreOpensAtGenerationTwo) {
  auto tm = testing::open_tm(dev_);
  EXPECT_EQ(tm->generation(), 2u);
  EXPECT_EQ(tm->committed_generation(), 1u);
  EXPECT_FALSE(tm->has_changes());
  EXPECT_EQ(tm->meta_space().used(), 0u);
}

TEST_F(TransactionTest, CommittedStateSurvivesReopen) {
  uint64_t nr;
  {
    auto tm = testing::open_tm(dev_);
    nr = write_value_block(*tm, 42);
    tm->mutable_store_area()[0] = 7;
    ASSERT_TRUE(tm->commit().is_ok());
  }
  auto tm = testing::open_tm(dev_);
  EXPECT_EQ(tm->generation(), 3u);
  EXPECT_EQ(read_value(*tm, nr), 42);
  EXPECT_EQ(tm->store_area()[0], 7);
  EXPECT_TRUE(*tm->meta_space().is_allocated(nr - tm->layout().meta_start));
}

TEST_F(TransactionTest, ShadowCopiesCommittedBlocksOnce) {
  auto tm = testing::open_tm(dev_);
  uint64_t nr = write_value_block(*tm, 1);
  auto b = tm->read(nr, BlockType::kBTreeNode);
  bool moved = true;
  auto same = tm->shadow(*b, &moved);
  EXPECT_FALSE(moved);  // created in this transaction: already writable
  EXPECT_EQ(same->blocknr(), nr);
  ASSERT_TRUE(tm->commit().is_ok());
  auto c = tm->read(nr, BlockType::kBTreeNode);
  auto s = tm->shadow(*c, &moved);
  ASSERT_TRUE(s.is_ok());
  EXPECT_TRUE(moved);
  EXPECT_NE(s->blocknr(), nr);
  EXPECT_EQ(s->data()[100], 1);
  EXPECT_EQ(s->header().generation, tm->generation());
  // The original is freed but not reusable until the commit.
  EXPECT_FALSE(*tm->meta_space().is_allocated(nr - tm->layout().meta_start));
  EXPECT_TRUE(*tm->meta_space().is_allocated_committed(nr - tm->layout().meta_start));
}

TEST_F(TransactionTest, CrashBeforeCommitRecordKeepsTheOldState) {
  for (uint64_t seed = 0; seed < 10; ++seed) {
    MemoryDevice dev(64 << 20);
    ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size())).is_ok());
    uint64_t nr;
    {
      auto tm = testing::open_tm(dev);
      nr = write_value_block(*tm, 5);
      ASSERT_TRUE(tm->commit().is_ok());
      auto b = tm->read(nr, BlockType::kBTreeNode);
      bool moved;
      auto s = tm->shadow(*b, &moved);
      std::memset(s->mutable_data() + sizeof(BlockHeaderDisk), 6, kBlockPayload);
      write_value_block(*tm, 7);
      ASSERT_TRUE(tm->cache().write_dirty().is_ok());  // shadows reach the disk, no record
    }
    std::mt19937_64 rng(seed);
    dev.crash(rng);
    auto tm = testing::open_tm(dev);
    EXPECT_EQ(tm->committed_generation(), 2u);
    EXPECT_EQ(read_value(*tm, nr), 5);
    EXPECT_EQ(tm->meta_space().used(), 1u);
  }
}

void flip(MemoryDevice& dev, uint64_t block, size_t offset) {
  uint8_t b;
  ASSERT_TRUE(dev.read(block * kBlockSize + offset, &b, 1).is_ok());
  b ^= 0x5a;
  dev.poke(block * kBlockSize + offset, &b, 1);
}

TEST_F(TransactionTest, EveryCommitRecordIsWrittenTwice) {
  {
    auto tm = testing::open_tm(dev_);
    write_value_block(*tm, 5);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 2 in slot 0
  }
  const Layout& l = testing::make_superblock(dev_.size()).layout;
  std::vector<uint8_t> a(kBlockSize), b(kBlockSize);
  ASSERT_TRUE(dev_.read(l.commit_record_block(0, 0) * kBlockSize, a.data(), a.size()).is_ok());
  ASSERT_TRUE(dev_.read(l.commit_record_block(0, 1) * kBlockSize, b.data(), b.size()).is_ok());
  EXPECT_EQ(block_header(a.data())->generation, 2u);
  EXPECT_EQ(block_header(b.data())->generation, 2u);
  EXPECT_EQ(block_header(b.data())->blocknr, l.commit_record_block(0, 1));
  // Same record apart from the header's checksum and block number.
  EXPECT_TRUE(std::equal(a.begin() + 32, a.end(), b.begin() + 32));
}

TEST(TransactionCopies, OneDamagedCopyOfTheNewestRecordLosesNothingAndIsReported) {
  for (int copy = 0; copy < kCommitCopies; ++copy) {
    MemoryDevice dev(64 << 20);
    ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size())).is_ok());
    uint64_t nr;
    {
      auto tm = testing::open_tm(dev);
      nr = write_value_block(*tm, 5);
      ASSERT_TRUE(tm->commit().is_ok());  // generation 2 in slot 0
    }
    const Layout& l = testing::make_superblock(dev.size()).layout;
    flip(dev, l.commit_record_block(0, copy), 700);
    auto tm = testing::open_tm(dev);
    EXPECT_EQ(tm->committed_generation(), 2u) << "copy " << copy;
    EXPECT_EQ(read_value(*tm, nr), 5);
    ASSERT_EQ(tm->commit_findings().size(), 1u);
    EXPECT_FALSE(tm->commit_findings()[0].serious);
    EXPECT_NE(tm->commit_findings()[0].text.find("damaged"), std::string::npos);
    // Repair rewrites it; the next open finds nothing.
    EXPECT_EQ(*tm->repair_commit_copies(), 1);
    tm.reset();
    auto again = testing::open_tm(dev);
    EXPECT_TRUE(again->commit_findings().empty());
    EXPECT_EQ(again->committed_generation(), 2u);
  }
}

TEST_F(TransactionTest, BothCopiesOfANewerRecordDamagedIsRefusedUnlessAsked) {
  {
    auto tm = testing::open_tm(dev_);
    write_value_block(*tm, 5);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 2 in slot 0
    write_value_block(*tm, 9);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 3 in slot 1
  }
  const Layout& l = testing::make_superblock(dev_.size()).layout;
  flip(dev_, l.commit_record_block(1, 0), 300);
  flip(dev_, l.commit_record_block(1, 1), 2000);
  auto r = TransactionManager::open(dev_, {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("--use-older-commit"), std::string::npos) << r.status().to_string();
  TmOptions older;
  older.use_older_commit = true;
  auto tm = std::move(TransactionManager::open(dev_, older)).value();
  EXPECT_EQ(tm->committed_generation(), 2u);
  bool serious = false;
  for (auto& f : tm->commit_findings()) serious |= f.serious;
  EXPECT_TRUE(serious);
}

TEST_F(TransactionTest, ATornCopyOfAnInterruptedCommitIsAWarningOnly) {
  {
    auto tm = testing::open_tm(dev_);
    write_value_block(*tm, 5);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 2 in slot 0
    write_value_block(*tm, 9);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 3 in slot 1
  }
  // Generation 4 was being written to slot 0: copy 0 half there.
  const Layout& l = testing::make_superblock(dev_.size()).layout;
  std::vector<uint8_t> blk(kBlockSize);
  ASSERT_TRUE(dev_.read(l.commit_record_block(0, 0) * kBlockSize, blk.data(), blk.size()).is_ok());
  block_header(blk.data())->generation = 4;
  dev_.poke(l.commit_record_block(0, 0) * kBlockSize, blk.data(), 512);
  auto tm = testing::open_tm(dev_);
  EXPECT_EQ(tm->committed_generation(), 3u);
  ASSERT_EQ(tm->commit_findings().size(), 1u);
  EXPECT_FALSE(tm->commit_findings()[0].serious);
}

TEST_F(TransactionTest, NoValidCommitRecordIsAClearError) {
  const Layout& l = testing::make_superblock(dev_.size()).layout;
  std::vector<uint8_t> zeros(2 * kCommitCopies * l.commit_blocks * kBlockSize, 0);
  dev_.poke(l.commit_start * kBlockSize, zeros.data(), zeros.size());
  auto r = TransactionManager::open(dev_, {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("no valid commit record"), std::string::npos);
}

TEST_F(TransactionTest, AFailedCommitFailsTheManagerUntilReopened) {
  FaultDevice fault(dev_);
  TmOptions o;
  auto tm = std::move(TransactionManager::open(fault, o)).value();
  write_value_block(*tm, 1);
  FaultRule r;
  r.op = FaultOp::kFlush;
  fault.add_rule(r);
  Status s = tm->commit();
  EXPECT_EQ(s.code(), Code::kIoError);
  EXPECT_FALSE(tm->status().is_ok());
  EXPECT_EQ(tm->new_block(BlockType::kBTreeNode).status().code(), Code::kFailed);
  EXPECT_EQ(tm->commit().code(), Code::kFailed);
  fault.clear_rules();
  auto again = testing::open_tm(fault);
  EXPECT_EQ(again->committed_generation(), 1u);
}

// Format 2: the fixed metadata area is all there is.
TEST_F(TransactionTest, ReserveRefusesWhenMetadataIsShortInAVersion2Store) {
  MemoryDevice small(64 << 20);
  ASSERT_TRUE(TransactionManager::format(small, testing::make_superblock(small.size(), 4096, 256 << 10, 2)).is_ok());
  auto tm = testing::open_tm(small);
  uint64_t total = tm->meta_space().total();
  EXPECT_EQ(total, tm->layout().meta_blocks);
  for (uint64_t i = 0; i + 10 < total; ++i) write_value_block(*tm, 1);
  EXPECT_EQ(tm->reserve_meta(20).code(), Code::kNoSpace);
  EXPECT_TRUE(tm->reserve_meta(5).is_ok());
  EXPECT_EQ(tm->borrowed_chunks(), 0u);
}

// Format 3: past the pool, metadata borrows whole data chunks; a block freed
// there is not reused before the commit; emptied chunks go back to data.
TEST_F(TransactionTest, MetadataBorrowsDataChunksPastThePool) {
  MemoryDevice small(64 << 20);
  ASSERT_TRUE(TransactionManager::format(small, testing::make_superblock(small.size(), 65536, 64 << 10)).is_ok());
  auto tm = testing::open_tm(small);
  const uint64_t pool = tm->layout().meta_blocks;
  ASSERT_EQ(pool, 16u);
  std::vector<uint64_t> blocks;
  for (uint64_t i = 0; i < pool; ++i) blocks.push_back(write_value_block(*tm, 1));
  EXPECT_EQ(tm->borrowed_chunks(), 0u);
  ASSERT_TRUE(tm->reserve_meta(20).is_ok());  // borrows two 16-block chunks ahead
  EXPECT_EQ(tm->borrowed_chunks(), 2u);
  EXPECT_EQ(tm->data_space().used(), 2u);
  for (int i = 0; i < 20; ++i) blocks.push_back(write_value_block(*tm, 2));
  for (uint64_t i = pool; i < blocks.size(); ++i) EXPECT_TRUE(tm->layout().in_data_area(blocks[i])) << blocks[i];
  ASSERT_TRUE(tm->commit().is_ok());
  EXPECT_EQ(tm->committed_borrowed_chunks(), 2u);
  // Data allocation skips them.
  uint64_t chunk = *tm->allocate_chunk();
  EXPECT_NE(chunk, tm->layout().chunk_of_block(blocks[pool]));
  EXPECT_NE(chunk, tm->layout().chunk_of_block(blocks.back()));
  // Freed in this transaction: not reused before the commit.
  const uint64_t freed = blocks.back();
  blocks.pop_back();
  ASSERT_TRUE(tm->free_block(freed).is_ok());
  for (int i = 0; i < 40; ++i) EXPECT_NE(write_value_block(*tm, 3), freed);
  ASSERT_TRUE(tm->commit().is_ok());
  // Reopen: the borrowed chunks are found from the bitmaps.
  const uint64_t borrowed = tm->borrowed_chunks();
  const uint64_t used = tm->meta_space().used();
  tm = testing::open_tm(small);
  EXPECT_EQ(tm->borrowed_chunks(), borrowed);
  EXPECT_EQ(tm->meta_space().used(), used);
  EXPECT_EQ(read_value(*tm, blocks[pool]), 2);
}

TEST_F(TransactionTest, EmptiedBorrowedChunksGoBackToData) {
  MemoryDevice small(64 << 20);
  ASSERT_TRUE(TransactionManager::format(small, testing::make_superblock(small.size(), 65536, 64 << 10)).is_ok());
  auto tm = testing::open_tm(small);
  std::vector<uint64_t> blocks;
  for (int i = 0; i < 16 + 64; ++i) blocks.push_back(write_value_block(*tm, 1));
  ASSERT_TRUE(tm->commit().is_ok());
  EXPECT_EQ(tm->borrowed_chunks(), 4u);
  const uint64_t data_used = tm->data_space().used();
  for (uint64_t b : blocks) ASSERT_TRUE(tm->free_block(b).is_ok());
  ASSERT_TRUE(tm->commit().is_ok());
  EXPECT_EQ(tm->borrowed_chunks(), 0u);
  EXPECT_EQ(tm->data_space().used(), data_used - 4);
  EXPECT_EQ(tm->meta_space().used(), 0u);
  tm = testing::open_tm(small);
  EXPECT_EQ(tm->borrowed_chunks(), 0u);
  EXPECT_EQ(tm->committed_borrowed_chunks(), 0u);
}

TEST_F(TransactionTest, ReadOnlyRefusesChanges) {
  TmOptions o;
  o.read_only = true;
  auto tm = std::move(TransactionManager::open(dev_, o)).value();
  EXPECT_EQ(tm->new_block(BlockType::kBTreeNode).status().code(), Code::kReadOnly);
}

}  // namespace
}  // namespace multisnap
