// A store on an in-memory device, without an engine, and the helpers the
// store tests share: reopen, snapshot, the origin-write loop, lookups, dump,
// check, reclaim to the end.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "meta/transaction.h"
#include "support/memory_device.h"
#include "store/check_store.h"
#include "store/exception_store.h"

namespace multisnap::testing {

class StoreFixture : public ::testing::Test {
 protected:
  static constexpr uint32_t kChunk = 4096;

  // Formats dev_ with `format` (4 KiB chunks, 1 GiB origin) and opens it.
  void format(StoreFormat format) {
    CreateOptions o;
    o.format = format;
    o.chunk_size = kChunk;
    o.origin_size = 1 << 30;
    o.origin_path = "/dev/null";
    ASSERT_TRUE(format_store(dev_, o).is_ok());
    reopen();
  }
  void reopen() {
    store_.reset();
    auto r = open_store(dev_, {});
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    store_ = std::move(r).value();
  }
  SnapshotInfo snap(std::optional<SnapshotId> parent = std::nullopt, std::string name = "") {
    auto r = store_->create_snapshot(parent, name, 1);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : SnapshotInfo{};
  }
  SnapshotInfo fresh(const SnapshotInfo& s) { return **store_->find_snapshot(s.id); }
  // Runs the origin-write loop for a chunk; returns the store chunk of each copy.
  std::vector<uint64_t> origin_write(uint64_t chunk) {
    std::vector<uint64_t> dests;
    store_->reset_query(chunk);
    for (;;) {
      auto more = store_->query_next_remap();
      EXPECT_TRUE(more.is_ok());
      if (!more.is_ok() || !*more) break;
      CopyDescriptor d;
      auto c = store_->add_next_remap(&d);
      EXPECT_TRUE(c.is_ok()) << c.status().to_string();
      if (!c.is_ok()) break;
      dests.push_back(*c);
    }
    return dests;
  }
  ChunkMapping map(uint64_t chunk, const SnapshotInfo& s) {
    auto r = store_->lookup(chunk, s, true);
    EXPECT_TRUE(r.is_ok());
    return r.is_ok() ? *r : ChunkMapping{};
  }
  std::vector<DumpEntry> dump() {
    std::vector<DumpEntry> all;
    EXPECT_TRUE(store_->dump([&](const DumpEntry& e) { all.push_back(e); return true; }).is_ok());
    return all;
  }
  void expect_clean() {
    ASSERT_TRUE(store_->commit().is_ok());
    for (auto& p : check_store(dev_)) ADD_FAILURE() << p;
  }
  void reclaim_all() {
    while (store_->reclaim_pending()) {
      ASSERT_TRUE(store_->reclaim_step(1000).is_ok());
      ASSERT_TRUE(store_->commit().is_ok());
    }
  }

  MemoryDevice dev_{256 << 20};
  std::unique_ptr<ExceptionStore> store_;
};

// A store of a chosen size on a MemoryDevice, for the tests of space (full
// stores, borrowing, growth); parameterised by the store format. 4 KiB
// chunks, a 1 GiB origin.
class SpaceFixture : public ::testing::TestWithParam<StoreFormat> {
 protected:
  // Formats a new device of `device` bytes with `o` (format, chunk size and
  // origin filled in here) and opens it.
  void format(uint64_t device, CreateOptions o) {
    dev_ = std::make_unique<MemoryDevice>(device, "store");
    o.format = GetParam();
    o.chunk_size = 4096;
    o.origin_size = 1ull << 30;
    o.origin_path = "/dev/null";
    Status made = format_store(*dev_, o);
    ASSERT_TRUE(made.is_ok()) << made.to_string();
    reopen();
  }
  // Opens the store on dev_, or on `on` (a device in front of it).
  void reopen(BlockDevice* on = nullptr) {
    store_.reset();
    auto r = open_store(on ? *on : *dev_, {});
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    store_ = std::move(r).value();
  }
  void expect_clean(const std::string& when) {
    ASSERT_TRUE(store_->commit().is_ok()) << when;
    for (auto& p : check_store(*dev_)) ADD_FAILURE() << when << ": " << p;
  }
  // One origin write to `chunk`: ok, or kNoSpace having changed nothing.
  Status origin_write(uint64_t chunk) {
    store_->reset_query(chunk);
    for (;;) {
      MS_ASSIGN_OR_RETURN(bool more, store_->query_next_remap());
      if (!more) return Status::ok();
      CopyDescriptor d;
      MS_TRY(store_->add_next_remap(&d).status());
    }
  }
  void reclaim_all() {
    while (store_->reclaim_pending()) {
      ASSERT_TRUE(store_->reclaim_step(1000).is_ok());
      ASSERT_TRUE(store_->commit().is_ok());
    }
  }
  TransactionManager& tm() { return store_->tm(); }
  const Layout& layout() { return store_->layout(); }

  std::unique_ptr<MemoryDevice> dev_;
  std::unique_ptr<ExceptionStore> store_;
};

}  // namespace multisnap::testing
