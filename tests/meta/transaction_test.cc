#include "meta/transaction.h"

#include <gtest/gtest.h>

#include "io/fault_device.h"
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

TEST_F(TransactionTest, TornCommitRecordFallsBackToThePreviousOne) {
  uint64_t nr;
  {
    auto tm = testing::open_tm(dev_);
    nr = write_value_block(*tm, 5);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 2 in slot 0
    write_value_block(*tm, 9);
    ASSERT_TRUE(tm->commit().is_ok());  // generation 3 in slot 1
  }
  // Damage slot 1 (generation 3).
  const Layout& l = testing::make_superblock(dev_.size()).layout;
  uint8_t junk = 0xff;
  dev_.poke((l.commit_start + l.commit_blocks) * kBlockSize + 300, &junk, 1);
  auto tm = testing::open_tm(dev_);
  EXPECT_EQ(tm->committed_generation(), 2u);
  EXPECT_EQ(read_value(*tm, nr), 5);
}

TEST_F(TransactionTest, NoValidCommitRecordIsAClearError) {
  const Layout& l = testing::make_superblock(dev_.size()).layout;
  std::vector<uint8_t> zeros(2 * l.commit_blocks * kBlockSize, 0);
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

TEST_F(TransactionTest, ReserveRefusesWhenMetadataIsShort) {
  MemoryDevice small(64 << 20);
  ASSERT_TRUE(TransactionManager::format(small, testing::make_superblock(small.size(), 4096, 256 << 10)).is_ok());
  auto tm = testing::open_tm(small);
  uint64_t total = tm->meta_space().total();
  for (uint64_t i = 0; i + 10 < total; ++i) write_value_block(*tm, 1);
  EXPECT_EQ(tm->reserve_meta(20).code(), Code::kNoSpace);
  EXPECT_TRUE(tm->reserve_meta(5).is_ok());
}

TEST_F(TransactionTest, ReadOnlyRefusesChanges) {
  TmOptions o;
  o.read_only = true;
  auto tm = std::move(TransactionManager::open(dev_, o)).value();
  EXPECT_EQ(tm->new_block(BlockType::kBTreeNode).status().code(), Code::kReadOnly);
}

}  // namespace
}  // namespace multisnap
