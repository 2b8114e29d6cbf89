// One suite for every IoContext, with file and memory devices.
#include "io/io_context.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "io/file_device.h"
#include "io/test_files.h"
#include "support/memory_device.h"
#include "support/test_io_context.h"

namespace multisnap {
namespace {

struct Case {
  std::string name;
  bool file;
  int kind;  // 0 sync, 1 reordering, 2 uring
};

class IoContextTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (GetParam().file) {
      FileDeviceOptions o;
      o.create = true;
      o.create_size = 4 << 20;
      dev_ = std::move(FileDevice::open(dir_.file("d.img"), o)).value();
    } else {
      dev_ = std::make_unique<MemoryDevice>(4 << 20);
    }
    switch (GetParam().kind) {
      case 0: ctx_ = make_sync_io_context(); break;
      case 1: ctx_ = make_reordering_io_context(11); break;
      default: {
        auto r = make_uring_io_context(8);  // small ring: exercises overflow
        if (!r.is_ok()) GTEST_SKIP() << "io_uring unavailable: " << r.status().to_string();
        ctx_ = std::move(r).value();
      }
    }
  }
  void drain() {
    for (int i = 0; i < 100000 && ctx_->in_flight() > 0; ++i) ctx_->run(true, 100);
    ASSERT_EQ(ctx_->in_flight(), 0u);
  }
  testing::TempDir dir_;
  std::unique_ptr<BlockDevice> dev_;
  std::unique_ptr<IoContext> ctx_;
};

TEST_P(IoContextTest, WritesThenReadsManyOps) {
  constexpr int kOps = 100;
  std::vector<std::vector<uint8_t>> bufs(kOps, std::vector<uint8_t>(8192));
  std::vector<IoOp> ops(kOps);
  int done = 0;
  bool in_submit = true;
  for (int i = 0; i < kOps; ++i) {
    std::fill(bufs[i].begin(), bufs[i].end(), static_cast<uint8_t>(i + 1));
    ops[i] = {IoOp::Kind::kWrite, i % 7 == 0, dev_.get(), uint64_t(i) * 8192, bufs[i].data(), 8192,
              [&](Status s) {
                EXPECT_FALSE(in_submit) << "callback ran inside submit";
                EXPECT_TRUE(s.is_ok()) << s.to_string();
                ++done;
              }};
    ctx_->submit(&ops[i]);
  }
  in_submit = false;
  drain();
  EXPECT_EQ(done, kOps);
  IoOp flush{IoOp::Kind::kFlush, false, dev_.get(), 0, nullptr, 0, [&](Status s) { EXPECT_TRUE(s.is_ok()); ++done; }};
  ctx_->submit(&flush);
  drain();
  std::vector<std::vector<uint8_t>> back(kOps, std::vector<uint8_t>(8192));
  for (int i = 0; i < kOps; ++i) {
    ops[i] = {IoOp::Kind::kRead, false, dev_.get(), uint64_t(i) * 8192, back[i].data(), 8192,
              [&](Status s) { EXPECT_TRUE(s.is_ok()); }};
    ctx_->submit(&ops[i]);
  }
  drain();
  for (int i = 0; i < kOps; ++i) EXPECT_EQ(back[i], bufs[i]) << i;
}

TEST_P(IoContextTest, ReportsErrors) {
  std::vector<uint8_t> buf(4096);
  Status got;
  IoOp op{IoOp::Kind::kRead, false, dev_.get(), dev_->size() - 100, buf.data(), 4096,
          [&](Status s) { got = s; }};
  ctx_->submit(&op);
  drain();
  EXPECT_FALSE(got.is_ok());
}

TEST_P(IoContextTest, WakeInterruptsAWait) {
  ctx_->run(false);  // settle anything pending
  std::atomic<bool> woken{false};
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    woken = true;
    ctx_->wake();
  });
  auto start = std::chrono::steady_clock::now();
  ctx_->run(true, 5000);
  bool woken_before_return = woken.load();
  auto waited = std::chrono::steady_clock::now() - start;
  t.join();
  EXPECT_TRUE(woken_before_return) << "run(true) returned without waiting for the wake";
  EXPECT_LT(waited, std::chrono::milliseconds(1000));  // woken, not timed out
}

TEST_P(IoContextTest, TimeoutReturns) {
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(ctx_->run(true, 30), 0u);
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(25)) << "run(true, 30) did not wait";
  EXPECT_LT(waited, std::chrono::seconds(3));
}

INSTANTIATE_TEST_SUITE_P(AllContexts, IoContextTest,
                         ::testing::Values(Case{"SyncMemory", false, 0}, Case{"ReorderMemory", false, 1},
                                           Case{"UringFile", true, 2}, Case{"UringMemory", false, 2},
                                           Case{"SyncFile", true, 0}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace multisnap
