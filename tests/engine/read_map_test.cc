// ReadMap (src/engine/read_map.h): what it remembers, its bound, and that
// forgetting waits for exactly the readers that could have seen the entry.
#include "engine/read_map.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace multisnap {
namespace {

using namespace std::chrono_literals;

TEST(ReadMap, RemembersForgetsAndIsBounded) {
  ReadMap m(3);
  uint64_t x = 0;
  EXPECT_FALSE(m.find_run(1, 10, 10, &x));
  m.insert(1, 10, 100);
  m.insert(1, 11, ReadMap::kZeros);
  m.insert(2, 10, 200);
  m.insert(2, 11, 201);  // over the bound: not remembered
  EXPECT_EQ(m.entries(), 3u);
  ASSERT_TRUE(m.find_run(1, 10, 10, &x));
  EXPECT_EQ(x, 100u);
  ASSERT_TRUE(m.find_run(1, 11, 11, &x));
  EXPECT_EQ(x, ReadMap::kZeros);
  EXPECT_FALSE(m.find_run(2, 11, 11, &x));
  uint64_t run[2] = {};
  ASSERT_TRUE(m.find_run(1, 10, 11, run));
  EXPECT_EQ(run[0], 100u);
  EXPECT_EQ(run[1], ReadMap::kZeros);
  EXPECT_FALSE(m.find_run(2, 10, 11, run));  // all or nothing
  m.forget_chunk(10);  // every snapshot's chunk 10
  EXPECT_FALSE(m.find_run(1, 10, 10, &x));
  EXPECT_FALSE(m.find_run(2, 10, 10, &x));
  EXPECT_EQ(m.entries(), 1u);
  m.forget_snapshot(1);
  EXPECT_EQ(m.entries(), 0u);
  EXPECT_FALSE(m.find_run(1, 11, 11, &x));
  EXPECT_FALSE(ReadMap(0).enabled());
}

TEST(ReadMap, ForgettingWaitsForReadersThatEnteredBefore) {
  ReadMap m(16);
  m.insert(1, 5, 50);
  uint64_t e = m.enter();  // a reader in the middle of its read
  std::atomic<bool> forgotten{false};
  std::thread engine([&] {
    m.forget_chunk(5);
    forgotten = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(forgotten.load()) << "forget_chunk returned while a reader that could have seen the entry was reading";
  // A reader entering now does not hold it up, and cannot see the entry.
  uint64_t late = 0;
  for (int i = 0; i < 100 && late == 0; ++i) {
    uint64_t e2 = m.enter();
    uint64_t x = 0;
    if (!m.find_run(1, 5, 5, &x)) late = 1;
    m.leave(e2);
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(late, 1u);
  EXPECT_FALSE(forgotten.load());
  m.leave(e);
  engine.join();
  EXPECT_TRUE(forgotten.load());
}

TEST(ReadMap, ManyReadersAndForgetsNeverSeeAForgottenEntry) {
  // The engine thread changes chunk c's place only after forget_chunk(c)
  // returned; a reader that finds c must still be inside when it "reads".
  ReadMap m(1024);
  constexpr uint64_t kChunks = 8;
  std::atomic<uint64_t> place[kChunks];
  for (uint64_t c = 0; c < kChunks; ++c) {
    place[c] = c * 1000;
    m.insert(1, c, c * 1000);
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> hits{0}, stale{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t)
    readers.emplace_back([&, t] {
      uint64_t i = t;
      while (!stop) {
        uint64_t c = i++ % kChunks, x = 0;
        uint64_t e = m.enter();
        if (m.find_run(1, c, c, &x)) {
          ++hits;
          if (place[c].load() != x) ++stale;  // the "data" moved while we could still read it
        }
        m.leave(e);
      }
    });
  auto until = std::chrono::steady_clock::now() + 300ms;
  // At least 300 ms and 2000 forgets, but no more than 5 s: each forget
  // waits for the readers in the map to leave, which on 2 busy cores under
  // a sanitizer can take a scheduler slice (2000 rounds once took 100 s in
  // CI's ASan pass).
  const auto deadline = until + 5s;
  for (uint64_t round = 1;; ++round) {
    const auto now = std::chrono::steady_clock::now();
    if ((round > 2000 && now >= until) || (round > 200 && now >= deadline)) break;
    uint64_t c = round % kChunks;
    m.forget_chunk(c);
    place[c] = c * 1000 + round;  // moved: only now
    m.insert(1, c, place[c]);
  }
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(stale.load(), 0u);
  EXPECT_GT(hits.load(), 0u);
}

}  // namespace
}  // namespace multisnap
