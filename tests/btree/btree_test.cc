// The B+tree against a std::map model, through commits, reopens and a cache
// small enough that every operation misses.
#include "btree/btree.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "meta/meta_fixture.h"
#include "util/endian.h"

namespace multisnap {
namespace {

// u64 keys and fat values, so trees get deep with few entries.
template <uint16_t VSize>
struct TestTraits {
  using Key = uint64_t;
  using Value = uint64_t;
  static constexpr uint32_t kTreeKind = 0x54455354;
  static constexpr uint16_t kKeySize = 8;
  static constexpr uint16_t kValueSize = VSize;
  static void encode_key(const Key& k, uint8_t* p) { store_le(p, k); }
  static Key decode_key(const uint8_t* p) { return load_le<uint64_t>(p); }
  static void encode_value(const Value& v, uint8_t* p) {
    std::memset(p, static_cast<int>(v & 0xff), VSize);
    store_le(p, v);
  }
  static Value decode_value(const uint8_t* p) { return load_le<uint64_t>(p); }
  static bool less(const Key& a, const Key& b) { return a < b; }
  static std::string key_string(const Key& k) { return std::to_string(k); }
};

template <class T>
void check_tree(TransactionManager& tm, uint64_t root, const std::map<uint64_t, uint64_t>& model) {
  BTree<T> tree(tm, root);
  std::vector<std::string> problems;
  std::map<uint64_t, uint64_t> seen;
  tree.walk([](const NodeVisit&) {}, [&](const uint64_t& k, const uint64_t& v) { seen[k] = v; },
            [&](const std::string& p) { problems.push_back(p); });
  EXPECT_TRUE(problems.empty()) << problems.front();
  EXPECT_EQ(seen, model);
}

template <class T>
void randomized(uint64_t seed, size_t cache_bytes, int steps, uint64_t key_space) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  MemoryDevice dev(256 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 4096, 64 << 20)).is_ok());
  auto tm = testing::open_tm(dev, cache_bytes);
  uint64_t root = *BTree<T>::create(*tm);
  std::map<uint64_t, uint64_t> model;
  std::mt19937_64 rng(seed);
  for (int step = 0; step < steps; ++step) {
    BTree<T> tree(*tm, root);
    uint64_t k = rng() % key_space;
    switch (rng() % 10) {
      case 0: case 1: case 2: case 3: {
        uint64_t v = rng();
        ASSERT_TRUE(tree.insert(k, v).is_ok());
        model[k] = v;
        break;
      }
      case 4: case 5: case 6: {
        auto r = tree.remove(k);
        ASSERT_TRUE(r.is_ok()) << r.status().to_string();
        EXPECT_EQ(*r, model.erase(k) == 1);
        break;
      }
      case 7: {
        auto r = tree.lookup(k);
        ASSERT_TRUE(r.is_ok());
        auto it = model.find(k);
        EXPECT_EQ(r->has_value(), it != model.end());
        if (it != model.end() && r->has_value()) {
          EXPECT_EQ(**r, it->second);
        }
        auto lb = tree.lower_bound(k);
        auto mit = model.lower_bound(k);
        ASSERT_EQ(lb->has_value(), mit != model.end());
        if (mit != model.end()) {
          EXPECT_EQ((*lb)->key, mit->first);
        }
        auto fl = tree.floor(k);
        auto fit = model.upper_bound(k);
        bool has_floor = fit != model.begin();
        ASSERT_EQ(fl->has_value(), has_floor);
        if (has_floor) {
          EXPECT_EQ((*fl)->key, std::prev(fit)->first);
        }
        break;
      }
      case 8: {
        std::vector<uint64_t> got;
        ASSERT_TRUE(tree.scan(k, [&](const uint64_t& key, const uint64_t&) {
          got.push_back(key);
          return got.size() < 50;
        }).is_ok());
        std::vector<uint64_t> want;
        for (auto it = model.lower_bound(k); it != model.end() && want.size() < 50; ++it) want.push_back(it->first);
        EXPECT_EQ(got, want);
        break;
      }
      default: {
        // Commit, and sometimes reopen from the device.
        store_le(tm->mutable_store_area().data(), tree.root());
        ASSERT_TRUE(tm->commit().is_ok());
        if (rng() % 4 == 0) {
          tm = testing::open_tm(dev, cache_bytes);
          root = load_le<uint64_t>(tm->store_area().data());
          continue;
        }
      }
    }
    root = tree.root();
  }
  check_tree<T>(*tm, root, model);
  // Remove everything: one empty leaf remains, nothing leaks.
  for (auto& [k, v] : model) {
    BTree<T> tree(*tm, root);
    ASSERT_TRUE(*tree.remove(k));
    root = tree.root();
  }
  ASSERT_TRUE(tm->commit().is_ok());
  EXPECT_EQ(tm->meta_space().used(), 1u);
  check_tree<T>(*tm, root, {});
}

TEST(BTree, RandomizedSmallValuesRoomyCache) { randomized<TestTraits<8>>(1, 8 << 20, 30000, 5000); }
TEST(BTree, RandomizedFatValuesTinyCache) { randomized<TestTraits<200>>(2, 16 * kBlockSize, 20000, 3000); }
TEST(BTree, RandomizedManySeeds) {
  for (uint64_t seed = 10; seed < 16; ++seed) randomized<TestTraits<120>>(seed, 32 * kBlockSize, 4000, 400);
}

TEST(BTree, SequentialInsertBuildsADeepTree) {
  MemoryDevice dev(256 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 4096, 64 << 20)).is_ok());
  auto tm = testing::open_tm(dev, 1 << 20);
  using T = TestTraits<300>;
  BTree<T> tree(*tm, *BTree<T>::create(*tm));
  std::map<uint64_t, uint64_t> model;
  for (uint64_t k = 0; k < 20000; ++k) {
    ASSERT_TRUE(tree.insert(k * 3, k).is_ok());
    model[k * 3] = k;
  }
  uint32_t max_depth = 0;
  tree.walk([&](const NodeVisit& v) { max_depth = std::max(max_depth, v.depth); },
            [](const uint64_t&, const uint64_t&) {}, [](const std::string&) {});
  EXPECT_GE(max_depth, 2u);
  check_tree<T>(*tm, tree.root(), model);
  auto f = tree.floor(10);
  EXPECT_EQ((*f)->key, 9u);
  auto none = tree.floor(0);
  EXPECT_EQ((*none)->key, 0u);
}

TEST(BTree, WalkReportsADamagedNodeAndGoesOn) {
  MemoryDevice dev(256 << 20);
  ASSERT_TRUE(TransactionManager::format(dev, testing::make_superblock(dev.size(), 4096, 64 << 20)).is_ok());
  auto tm = testing::open_tm(dev, 1 << 20);
  using T = TestTraits<200>;
  BTree<T> tree(*tm, *BTree<T>::create(*tm));
  for (uint64_t k = 0; k < 2000; ++k) ASSERT_TRUE(tree.insert(k, k).is_ok());
  store_le(tm->mutable_store_area().data(), tree.root());
  ASSERT_TRUE(tm->commit().is_ok());
  // Find a leaf and damage it on disk.
  std::vector<uint64_t> leaves;
  tree.walk([&](const NodeVisit& v) { if (v.leaf) leaves.push_back(v.blocknr); },
            [](const uint64_t&, const uint64_t&) {}, [](const std::string&) {});
  ASSERT_GT(leaves.size(), 3u);
  uint8_t junk[16] = {1, 2, 3};
  dev.poke(leaves[1] * kBlockSize + 2000, junk, sizeof junk);
  auto fresh = testing::open_tm(dev, 1 << 20);
  BTree<T> again(*fresh, load_le<uint64_t>(fresh->store_area().data()));
  std::vector<std::string> problems;
  size_t entries = 0;
  again.walk([](const NodeVisit&) {}, [&](const uint64_t&, const uint64_t&) { ++entries; },
             [&](const std::string& p) { problems.push_back(p); });
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("checksum"), std::string::npos);
  EXPECT_NE(problems[0].find("lost"), std::string::npos);
  EXPECT_GT(entries, 1500u);  // the rest of the tree was still walked
  // A lookup that needs the damaged leaf fails cleanly.
  bool failed = false;
  for (uint64_t k = 0; k < 2000 && !failed; ++k) failed = !again.lookup(k).is_ok();
  EXPECT_TRUE(failed);
}

}  // namespace
}  // namespace multisnap
