// An engine over in-memory devices, driven synchronously from the test.
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <random>

#include "engine/engine.h"
#include "support/fault_device.h"
#include "support/memory_device.h"
#include "support/test_io_context.h"
#include "store/check_store.h"

namespace multisnap::testing {

struct EngineParams {
  uint32_t chunk = 4096;
  uint64_t origin_size = 1 << 20;
  uint64_t store_size = 48 << 20;
  size_t cache = 1 << 20;
  TestIo io = TestIo::kSync;
  uint64_t seed = 1;
  uint32_t copy_slots = 8;
  StoreFormat format = StoreFormat::kRange;
  std::function<bool()> on_no_space;  // EngineOptions::on_no_space
  uint32_t space_page = 4096;         // EngineOptions::space_page
  uint32_t inline_origin_write_max = 64u << 10;  // EngineOptions::inline_origin_write_max
  // The metadata pool (CreateOptions::metadata_size); a tiny one makes the
  // metadata live mostly in data chunks it borrows.
  std::optional<uint64_t> metadata_size;
};

class EngineHarness {
 public:
  explicit EngineHarness(const EngineParams& p)
      : p_(p), origin_mem_(p.origin_size, "origin"), store_mem_(p.store_size, "store"),
        origin_(origin_mem_), store_(store_mem_) {
    CreateOptions o;
    o.format = p.format;
    o.chunk_size = p.chunk;
    o.origin_size = p.origin_size;
    o.origin_path = "memory";
    o.metadata_size = p.metadata_size;
    Status s = format_store(store_mem_, o);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
  }

  void open() {
    EngineOptions eo;
    eo.threaded = false;
    eo.cache_bytes = p_.cache;
    eo.copy_slots = p_.copy_slots;
    eo.on_no_space = p_.on_no_space;
    eo.space_page = p_.space_page;
    eo.inline_origin_write_max = p_.inline_origin_write_max;
    auto e = Engine::open(origin_, store_, eo, make_test_io_context(p_.io, p_.seed));
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    engine_ = std::move(e).value();
  }
  void close() { engine_.reset(); }

  Engine& engine() { return *engine_; }
  MemoryDevice& origin_mem() { return origin_mem_; }
  MemoryDevice& store_mem() { return store_mem_; }
  FaultDevice& origin_dev() { return origin_; }
  FaultDevice& store_dev() { return store_; }
  const EngineParams& params() const { return p_; }

  VolumeRef volume(const std::string& name) {
    auto v = engine_->open_volume(name);
    EXPECT_TRUE(v.is_ok()) << name << ": " << v.status().to_string();
    return v.is_ok() ? *v : nullptr;
  }

  // Submits and runs the engine until the request is done.
  Status io(const VolumeRef& v, IoRequest::Op op, uint64_t off, uint64_t len, uint8_t* buf = nullptr,
            bool fua = false) {
    bool done = false;
    Status result;
    engine_->submit(v, {op, off, len, buf, fua}, [&](Status s) {
      result = s;
      done = true;
    });
    while (!done) engine_->poll();
    return result;
  }
  Status write(const VolumeRef& v, uint64_t off, const std::vector<uint8_t>& data) {
    return io(v, IoRequest::Op::kWrite, off, data.size(), const_cast<uint8_t*>(data.data()));
  }
  std::vector<uint8_t> read(const VolumeRef& v, uint64_t off, uint64_t len) {
    std::vector<uint8_t> out(len);
    Status s = io(v, IoRequest::Op::kRead, off, len, out.data());
    EXPECT_TRUE(s.is_ok()) << s.to_string();
    return out;
  }
  SnapshotId snapshot(std::optional<SnapshotId> of = std::nullopt, std::string name = "") {
    auto r = engine_->create_snapshot(of, name);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? r->id : 0;
  }

  // Opens the store read-only on the same devices and checks it.
  std::vector<std::string> check() { return check_store(store_mem_); }

  // Makes every later I/O fail (the power is off), as a crash sees it.
  void cut_power() {
    FaultRule r;
    r.sticky = true;
    origin_.add_rule(r);
    store_.add_rule(r);
  }
  void restore_power() {
    origin_.clear_rules();
    store_.clear_rules();
  }

 private:
  EngineParams p_;
  MemoryDevice origin_mem_;
  MemoryDevice store_mem_;
  FaultDevice origin_;
  FaultDevice store_;
  std::unique_ptr<Engine> engine_;
};

inline std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

}  // namespace multisnap::testing
