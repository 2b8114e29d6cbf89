// One suite, run against every BlockDevice implementation.
#include "io/block_device.h"

#include <gtest/gtest.h>
#include <sys/file.h>

#include <functional>
#include <random>
#include <vector>

#include "support/fault_device.h"
#include "io/file_device.h"
#include "support/memory_device.h"
#include "io/test_files.h"

namespace multisnap {
namespace {

constexpr uint64_t kSize = 8 << 20;

struct DeviceFactory {
  std::string name;
  std::function<std::unique_ptr<BlockDevice>(testing::TempDir&)> make;
};

// Keeps the wrapped device alive beside the wrapper.
class OwningFault : public BlockDevice {
 public:
  explicit OwningFault(std::unique_ptr<BlockDevice> inner) : inner_(std::move(inner)), fault_(*inner_) {}
  uint64_t size() const override { return fault_.size(); }
  Status read(uint64_t o, void* b, size_t l) override { return fault_.read(o, b, l); }
  Status write(uint64_t o, const void* b, size_t l) override { return fault_.write(o, b, l); }
  Status flush() override { return fault_.flush(); }
  Status discard(uint64_t o, uint64_t l) override { return fault_.discard(o, l); }
  Status write_zeroes(uint64_t o, uint64_t l) override { return fault_.write_zeroes(o, l); }
  std::string describe() const override { return fault_.describe(); }

 private:
  std::unique_ptr<BlockDevice> inner_;
  FaultDevice fault_;
};

std::vector<DeviceFactory> factories() {
  return {
      {"File",
       [](testing::TempDir& dir) -> std::unique_ptr<BlockDevice> {
         FileDeviceOptions o;
         o.create = true;
         o.create_size = kSize;
         return std::move(FileDevice::open(dir.file("dev.img"), o)).value();
       }},
      {"Memory", [](testing::TempDir&) -> std::unique_ptr<BlockDevice> { return std::make_unique<MemoryDevice>(kSize); }},
      {"Fault",
       [](testing::TempDir&) -> std::unique_ptr<BlockDevice> {
         return std::make_unique<OwningFault>(std::make_unique<MemoryDevice>(kSize));
       }},
  };
}

class BlockDeviceTest : public ::testing::TestWithParam<DeviceFactory> {
 protected:
  void SetUp() override { dev_ = GetParam().make(dir_); }
  testing::TempDir dir_;
  std::unique_ptr<BlockDevice> dev_;
};

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST_P(BlockDeviceTest, ReportsSize) { EXPECT_EQ(dev_->size(), kSize); }

TEST_P(BlockDeviceTest, ReadsBackWhatWasWritten) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> model(kSize, 0);
  for (int i = 0; i < 200; ++i) {
    uint64_t len = 1 + rng() % 20000;
    uint64_t off = rng() % (kSize - len);
    auto data = pattern(len, static_cast<uint32_t>(i));
    ASSERT_TRUE(dev_->write(off, data.data(), len).is_ok());
    std::copy(data.begin(), data.end(), model.begin() + static_cast<long>(off));
  }
  std::vector<uint8_t> all(kSize);
  ASSERT_TRUE(dev_->read(0, all.data(), kSize).is_ok());
  EXPECT_TRUE(all == model);
}

TEST_P(BlockDeviceTest, UnwrittenReadsAsZero) {
  std::vector<uint8_t> buf(4096, 1);
  ASSERT_TRUE(dev_->read(12345, buf.data(), buf.size()).is_ok());
  EXPECT_EQ(std::count(buf.begin(), buf.end(), 0), 4096);
}

TEST_P(BlockDeviceTest, RejectsOutOfRange) {
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(dev_->read(kSize - 100, buf.data(), 4096).code(), Code::kOutOfRange);
  EXPECT_EQ(dev_->write(kSize, buf.data(), 1).code(), Code::kOutOfRange);
  EXPECT_EQ(dev_->write(UINT64_MAX - 10, buf.data(), 4096).code(), Code::kOutOfRange);
  EXPECT_TRUE(dev_->read(kSize - 4096, buf.data(), 4096).is_ok());
  EXPECT_TRUE(dev_->write(kSize, buf.data(), 0).is_ok());
}

TEST_P(BlockDeviceTest, WriteZeroesZeroes) {
  auto data = pattern(65536, 3);
  ASSERT_TRUE(dev_->write(4096, data.data(), data.size()).is_ok());
  ASSERT_TRUE(dev_->write_zeroes(8192, 16384).is_ok());
  std::vector<uint8_t> buf(65536);
  ASSERT_TRUE(dev_->read(4096, buf.data(), buf.size()).is_ok());
  for (size_t i = 0; i < buf.size(); ++i) {
    bool zeroed = i >= 4096 && i < 4096 + 16384;
    ASSERT_EQ(buf[i], zeroed ? 0 : data[i]) << i;
  }
}

TEST_P(BlockDeviceTest, DiscardLeavesZerosOrOldData) {
  auto data = pattern(65536, 4);
  ASSERT_TRUE(dev_->write(0, data.data(), data.size()).is_ok());
  ASSERT_TRUE(dev_->discard(0, 65536).is_ok());
  std::vector<uint8_t> buf(65536);
  ASSERT_TRUE(dev_->read(0, buf.data(), buf.size()).is_ok());
  for (size_t i = 0; i < buf.size(); ++i) ASSERT_TRUE(buf[i] == 0 || buf[i] == data[i]);
}

TEST_P(BlockDeviceTest, FlushAndFuaSucceed) {
  auto data = pattern(4096, 5);
  ASSERT_TRUE(dev_->write_fua(0, data.data(), data.size()).is_ok());
  ASSERT_TRUE(dev_->flush().is_ok());
  std::vector<uint8_t> buf(4096);
  ASSERT_TRUE(dev_->read(0, buf.data(), buf.size()).is_ok());
  EXPECT_TRUE(buf == data);
}

INSTANTIATE_TEST_SUITE_P(AllDevices, BlockDeviceTest, ::testing::ValuesIn(factories()),
                         [](const auto& info) { return info.param.name; });

TEST(FileDevice, MissingFileIsAClearError) {
  auto r = FileDevice::open("/nonexistent/dir/file.img");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/dir/file.img"), std::string::npos);
}

TEST(FileDevice, ReadOnlyRefusesWrites) {
  testing::TempDir dir;
  FileDeviceOptions o;
  o.create = true;
  o.create_size = 65536;
  ASSERT_TRUE(FileDevice::open(dir.file("f"), o).is_ok());
  FileDeviceOptions ro;
  ro.read_only = true;
  auto dev = FileDevice::open(dir.file("f"), ro);
  ASSERT_TRUE(dev.is_ok());
  char b = 1;
  EXPECT_EQ((*dev)->write(0, &b, 1).code(), Code::kReadOnly);
}

// The lock is on a descriptor of its own, not on fd() (which io_uring
// holds on to after a kill -9 for a moment): a flock on fd() conflicts with
// it, and it goes with the device.
TEST(FileDevice, LockIsOnADescriptorOfItsOwn) {
  testing::TempDir dir;
  FileDeviceOptions o;
  o.create = true;
  o.create_size = 65536;
  auto a = FileDevice::open(dir.file("f"), o);
  ASSERT_TRUE(a.is_ok());
  auto taken = (*a)->try_lock(true);
  ASSERT_TRUE(taken.is_ok() && *taken);
  EXPECT_NE(::flock((*a)->fd(), LOCK_EX | LOCK_NB), 0) << "the lock is on fd()";
  auto b = FileDevice::open(dir.file("f"));
  ASSERT_TRUE(b.is_ok());
  auto busy = (*b)->try_lock(false);
  ASSERT_TRUE(busy.is_ok());
  EXPECT_FALSE(*busy) << "a second device took a lock the first one holds";
  a->reset();
  auto after = (*b)->try_lock(true);
  ASSERT_TRUE(after.is_ok());
  EXPECT_TRUE(*after) << "the lock outlived its device";
}

// is_hole answers with one SEEK_DATA, and agrees with allocation().
TEST(FileDevice, IsHoleAgreesWithAllocation) {
  testing::TempDir dir;
  FileDeviceOptions o;
  o.create = true;
  o.create_size = 1 << 20;
  auto dev = FileDevice::open(dir.file("f"), o);
  ASSERT_TRUE(dev.is_ok());
  std::vector<uint8_t> data(65536, 0xab);
  ASSERT_TRUE((*dev)->write(65536, data.data(), data.size()).is_ok());
  const uint64_t K64 = 65536;
  struct Case {
    uint64_t offset, len;
    bool hole;
  } cases[] = {{0, K64, true}, {K64, K64, false}, {0, 2 * K64, false}, {K64 + 4096, 4096, false},
               {2 * K64, K64, true}, {4 * K64, 12 * K64, true}, {0, 16 * K64, false}};
  for (const Case& c : cases) {
    auto h = (*dev)->is_hole(c.offset, c.len);
    ASSERT_TRUE(h.is_ok());
    auto a = (*dev)->allocation(c.offset, c.len);
    ASSERT_TRUE(a.is_ok());
    bool by_allocation = a->size() == 1 && a->front().hole;
    // A filesystem without SEEK_DATA says "all data": then neither is a hole.
    EXPECT_EQ(*h, by_allocation) << c.offset << "+" << c.len;
    if (by_allocation || !c.hole) {
      EXPECT_EQ(*h, c.hole) << c.offset << "+" << c.len;
    }
  }
  EXPECT_FALSE((*dev)->is_hole((1 << 20) - 4096, 8192).is_ok()) << "past the end";
}

TEST(FaultDevice, FailsTheNthMatchingCall) {
  MemoryDevice mem(1 << 20);
  FaultDevice dev(mem);
  FaultRule r;
  r.op = FaultOp::kWrite;
  r.nth = 3;
  dev.add_rule(r);
  char b[512] = {};
  EXPECT_TRUE(dev.write(0, b, 512).is_ok());
  EXPECT_TRUE(dev.read(0, b, 512).is_ok());
  EXPECT_TRUE(dev.write(0, b, 512).is_ok());
  Status s = dev.write(0, b, 512);
  EXPECT_EQ(s.code(), Code::kIoError);
  EXPECT_NE(s.message().find("injected"), std::string::npos);
  EXPECT_TRUE(dev.write(0, b, 512).is_ok());  // not sticky
  EXPECT_EQ(dev.injected(), 1u);
}

TEST(FaultDevice, StickyWindowAndNoSpace) {
  MemoryDevice mem(1 << 20);
  FaultDevice dev(mem);
  FaultRule r;
  r.op = FaultOp::kAny;
  r.sticky = true;
  r.code = Code::kNoSpace;
  r.window_offset = 65536;
  r.window_len = 4096;
  dev.add_rule(r);
  char b[512] = {};
  EXPECT_TRUE(dev.write(0, b, 512).is_ok());
  EXPECT_EQ(dev.write(65536 + 512, b, 512).code(), Code::kNoSpace);
  EXPECT_EQ(dev.read(65536, b, 512).code(), Code::kNoSpace);
  EXPECT_TRUE(dev.read(70000, b, 512).is_ok());
  dev.clear_rules();
  EXPECT_TRUE(dev.write(65536, b, 512).is_ok());
}

TEST(FaultDevice, RandomFailuresAreRepeatableBySeed) {
  auto run = [](uint64_t seed) {
    MemoryDevice mem(1 << 20);
    FaultDevice dev(mem);
    FaultRule r;
    r.probability = 0.3;
    r.seed = seed;
    dev.add_rule(r);
    std::string pattern;
    char b[512] = {};
    for (int i = 0; i < 64; ++i) pattern += dev.write(0, b, 512).is_ok() ? '.' : 'X';
    return pattern;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  EXPECT_NE(run(42).find('X'), std::string::npos);
}

}  // namespace
}  // namespace multisnap
