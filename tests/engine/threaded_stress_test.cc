// The engine on its own thread under real concurrency: four client threads
// write and read the origin and snapshots while a control thread creates
// snapshots (and, with the range store, snapshots of snapshots) and deletes
// old ones, so snapshot reads run while chunks are remapped and while deleted
// snapshots are reclaimed; origin reads and direct origin writes run on the
// clients' own threads, and so do snapshot reads of chunks the engine has
// seen in the store (read_map.h). At the end the origin is rolled back to a snapshot
// while other threads read snapshots. It is meant to run under
// ThreadSanitizer too (test.sh's TSan pass); the checks:
//  * every origin write acknowledged before a create started is in that
//    snapshot; a write issued after the create returned is not; a write in
//    flight during the create may be either (per unit, against the history
//    of writes with their issue and acknowledgement times);
//  * a snapshot nobody writes reads exactly what it held when created, on
//    every later read, during reclaim and during the rollback;
//  * an origin unit with no write in flight reads as its last acknowledged
//    write; a unit a thread wrote to a snapshot reads back as written;
//  * no read ever returns data that was never written to that unit of that
//    volume or one it descends from;
//  * after the rollback the origin is the target's image; check() is clean.
// Every 4 KiB unit written carries a stamp (write sequence number, unit,
// words derived from both), so a read can say which write it returned.
// MULTISNAP_SOAK=n runs n times longer; the seed is printed (threads make a
// run non-deterministic anyway; the seed only fixes each thread's choices).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "engine/engine.h"
#include "io/file_device.h"
#include "io/test_files.h"
#include "store/check_store.h"
#include "support/test_io_context.h"
#include "util/log.h"

namespace multisnap {
namespace {

using Clock = std::chrono::steady_clock;
using testing::TempDir;

constexpr uint32_t kUnit = 4096;
constexpr uint64_t kOriginSize = 4 << 20;
constexpr uint64_t kUnits = kOriginSize / kUnit;
constexpr int kClients = 4;
constexpr uint64_t kRunUnits = 2;  // thread t writes the runs r with r % kClients == t
constexpr uint64_t kWordsPerUnit = kUnit / 8;

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = getenv(name);
  return v ? std::stoull(v) : fallback;
}

int owner_of(uint64_t unit) { return static_cast<int>((unit / kRunUnits) % kClients); }

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void stamp(uint8_t* p, uint64_t seq, uint64_t unit) {
  uint64_t w[kWordsPerUnit];
  w[0] = seq;
  w[1] = unit;
  for (uint64_t i = 2; i < kWordsPerUnit; ++i) w[i] = mix(seq * kUnits * 8 + unit * 8 + i);
  std::memcpy(p, w, kUnit);
}

// The sequence number of the write whose stamp `p` holds for `unit`, 0 for
// a unit never written (zeros), nullopt for anything else.
std::optional<uint64_t> decode(const uint8_t* p, uint64_t unit) {
  uint64_t w[kWordsPerUnit];
  std::memcpy(w, p, kUnit);
  if (w[0] == 0) {
    for (uint64_t x : w)
      if (x != 0) return std::nullopt;
    return 0;
  }
  if (w[1] != unit) return std::nullopt;
  for (uint64_t i = 2; i < kWordsPerUnit; ++i)
    if (w[i] != mix(w[0] * kUnits * 8 + unit * 8 + i)) return std::nullopt;
  return w[0];
}

struct StressParams {
  StoreFormat format;
  TestIo io;
  uint32_t chunk;
};

constexpr uint64_t kNotAcked = UINT64_MAX;

struct WriteRecord {
  SnapshotId volume = 0;  // 0: the origin
  uint64_t issued = 0;    // logical time before submit
  uint64_t acked = kNotAcked;
};

struct Snap {
  SnapshotId id = 0;
  SnapshotId parent = 0;  // 0: a snapshot of the origin
  bool frozen = false;    // never written: reads must return `image`
  std::vector<uint64_t> image;     // frozen: the sequence number in each unit
  std::vector<uint64_t> own_last;  // writable: last acked write of each unit (only its owner touches it)
  // Writable: per unit, odd while its owner writes it (as the origin's gen_).
  std::unique_ptr<std::atomic<uint64_t>[]> gen{new std::atomic<uint64_t>[kUnits]()};
};
using SnapPtr = std::shared_ptr<Snap>;

class ThreadedStressTest : public ::testing::TestWithParam<StressParams> {
 protected:
  void SetUp() override {
    saved_level_ = log_level();
    set_log_level(LogLevel::kWarn);
    const StressParams& p = GetParam();
    FileDeviceOptions fo;
    fo.create = true;
    fo.create_size = kOriginSize;
    auto o = FileDevice::open(dir_.file("origin"), fo);
    ASSERT_TRUE(o.is_ok()) << o.status().to_string();
    origin_dev_ = std::move(o).value();
    fo.create_size = 128ull << 20;
    fo.direct_writes = true;  // copies around the page cache (io_uring), reads through it
    auto s = FileDevice::open(dir_.file("store"), fo);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    store_dev_ = std::move(s).value();
    CreateOptions co;
    co.format = p.format;
    co.chunk_size = p.chunk;
    co.origin_size = kOriginSize;
    co.origin_path = dir_.file("origin");
    ASSERT_TRUE(format_store(*store_dev_, co).is_ok());
    EngineOptions eo;
    eo.threaded = true;
    eo.cache_bytes = 1 << 20;
    eo.copy_slots = 4;
    eo.reclaim_budget = 64;  // many small reclaim steps, interleaved with everything else
    eo.commit_interval_ms = 50;
    auto e = Engine::open(*origin_dev_, *store_dev_, eo, make_test_io_context(p.io));
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    engine_ = std::move(e).value();
    for (auto& g : gen_) g.store(0);
    for (auto& l : last_seq_) l.store(0);
    history_.resize(kUnits);
  }

  void TearDown() override {
    set_log_level(saved_level_);
  }

  // ---- failures from any thread: the first few are reported, all stop the run
  void fail(const std::string& what) {
    stop_.store(true);
    std::lock_guard lock(fail_mu_);
    if (++failures_ <= 10) ADD_FAILURE() << what;
  }

  Status io_sync(const VolumeRef& v, IoRequest req, uint64_t write_seq = 0) {
    std::promise<Status> done;
    auto f = done.get_future();
    engine_->submit(v, req, [&](Status s) {
      if (write_seq != 0 && s.is_ok()) {
        uint64_t t = clock_.fetch_add(1);
        std::lock_guard lock(model_mu_);
        records_[write_seq].acked = t;
      }
      done.set_value(std::move(s));
    });
    return f.get();
  }

  // Writes `units` units from `first` to volume `snap` (null: the origin);
  // all of them belong to this thread.
  void write_units(const VolumeRef& v, const SnapPtr& snap, uint64_t first, uint64_t units, bool fua) {
    std::vector<uint8_t> buf(units * kUnit);
    uint64_t seq = next_seq_.fetch_add(1);
    for (uint64_t i = 0; i < units; ++i) stamp(buf.data() + i * kUnit, seq, first + i);
    {
      std::lock_guard lock(model_mu_);
      WriteRecord& r = records_[seq];
      r.volume = snap ? snap->id : 0;
      r.issued = clock_.fetch_add(1);
      if (!snap)
        for (uint64_t i = 0; i < units; ++i) history_[first + i].push_back(seq);
    }
    for (uint64_t i = 0; i < units; ++i) (snap ? snap->gen[first + i] : gen_[first + i]).fetch_add(1);  // odd: in flight
    Status s = io_sync(v, {IoRequest::Op::kWrite, first * kUnit, units * kUnit, buf.data(), fua}, seq);
    if (!s.is_ok()) return fail(v->name() + " write: " + s.to_string());
    for (uint64_t i = 0; i < units; ++i) {
      if (snap) {
        snap->own_last[first + i] = seq;
        snap->gen[first + i].fetch_add(1);
      } else {
        last_seq_[first + i].store(seq);
        gen_[first + i].fetch_add(1);  // even: settled
      }
    }
    writes_.fetch_add(1, std::memory_order_relaxed);
  }

  // The volume a write with this sequence number went to, if it was issued.
  std::optional<SnapshotId> volume_of(uint64_t seq) {
    std::lock_guard lock(model_mu_);
    auto it = records_.find(seq);
    if (it == records_.end()) return std::nullopt;
    return it->second.volume;
  }

  void read_origin(const VolumeRef& v, uint64_t first, uint64_t units) {
    std::vector<uint8_t> buf(units * kUnit);
    std::vector<uint64_t> g1(units), expect(units);
    for (uint64_t i = 0; i < units; ++i) {
      g1[i] = gen_[first + i].load();
      expect[i] = last_seq_[first + i].load();
    }
    Status s = io_sync(v, {IoRequest::Op::kRead, first * kUnit, units * kUnit, buf.data(), false});
    if (!s.is_ok()) return fail("origin read: " + s.to_string());
    for (uint64_t i = 0; i < units; ++i) {
      uint64_t u = first + i;
      bool settled = g1[i] % 2 == 0 && gen_[u].load() == g1[i];
      auto seq = decode(buf.data() + i * kUnit, u);
      if (settled && seq == expect[i]) continue;
      if (settled) {
        return fail(fmt::format("origin unit {} with no write in flight holds {} instead of write {}", u,
                                seq ? std::to_string(*seq) : "garbage", expect[i]));
      }
      // A write of it was in flight: the old or the new data (the kernel may
      // even mix them within a page), as long as each half is the origin's.
      if (seq && *seq != 0 && volume_of(*seq) != std::optional<SnapshotId>(0))
        return fail(fmt::format("origin unit {} holds write {}, which was not an origin write", u, *seq));
    }
    reads_.fetch_add(1, std::memory_order_relaxed);
  }

  // Whether each 8-byte word of p is the same word of some write of unit u.
  bool words_are_of_unit(const uint8_t* p, uint64_t u) {
    uint64_t w[kWordsPerUnit];
    std::memcpy(w, p, kUnit);
    uint64_t last = next_seq_.load();
    // Zeros: the unit as it was before its first write.
    if ((w[1] != u && w[1] != 0) || w[0] >= last) return false;
    for (uint64_t i = 2; i < kWordsPerUnit; ++i) {
      bool found = w[i] == 0;
      for (uint64_t q = 1; q < last && !found; ++q) found = w[i] == mix(q * kUnits * 8 + u * 8 + i);
      if (!found) return false;
    }
    return true;
  }

  // Which write each 512-byte sector of unit u holds (for a failure message).
  std::string sectors_of(const uint8_t* p, uint64_t u) {
    std::string out;
    uint64_t last = next_seq_.load();
    for (uint64_t sec = 0; sec < kUnit / 512; ++sec) {
      uint64_t w[64];
      std::memcpy(w, p + sec * 512, 512);
      std::string who = "?";
      bool zero = std::all_of(std::begin(w), std::end(w), [](uint64_t x) { return x == 0; });
      if (zero) who = "0";
      for (uint64_t q = 1; !zero && q < last && who == "?"; ++q) {
        bool match = true;
        for (uint64_t i = std::max<uint64_t>(2, sec * 64); i < sec * 64 + 64 && match; ++i)
          match = w[i - sec * 64] == mix(q * kUnits * 8 + u * 8 + i);
        if (match) who = std::to_string(q);
      }
      if (who == "?")  // another unit's data?
        for (uint64_t q = 1; q < last && who == "?"; ++q)
          for (uint64_t v = 0; v < kUnits && who == "?"; ++v)
            if (w[63] == mix(q * kUnits * 8 + v * 8 + sec * 64 + 63)) who = fmt::format("{}@unit{}", q, v);
      out += (sec ? "," : "") + who;
    }
    return out;
  }

  void check_snapshot_unit(const Snap& sn, int me, uint64_t u, const uint8_t* p, bool written_meanwhile) {
    auto seq = decode(p, u);
    // A read racing a write of the same block may see parts of both (the
    // page cache copies in and out concurrently), but every word must still
    // come from some write of that unit.
    if (!seq && written_meanwhile && words_are_of_unit(p, u)) {
      torn_while_written_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!seq)
      return fail(fmt::format("snapshot {} ({}) unit {} holds data never written there; its sectors hold: {}", sn.id,
                              sn.frozen ? "frozen" : "writable", u, sectors_of(p, u)));
    if (sn.frozen) {
      if (*seq != sn.image[u])
        fail(fmt::format("snapshot {} unit {} holds write {}, not {} as when it was created", sn.id, u, *seq,
                         sn.image[u]));
      return;
    }
    if (owner_of(u) == me && sn.own_last[u] != 0) {
      if (*seq != sn.own_last[u])
        fail(fmt::format("snapshot {} unit {} holds write {}, not {} written to it last", sn.id, u, *seq,
                         sn.own_last[u]));
      return;
    }
    if (*seq == 0) return;
    auto vol = volume_of(*seq);
    if (!vol || (*vol != 0 && *vol != sn.id && *vol != sn.parent))
      fail(fmt::format("snapshot {} unit {} holds write {} to {}, not in its lineage", sn.id, u, *seq,
                       vol ? "snapshot/" + std::to_string(*vol) : "nowhere"));
  }

  void read_snapshot(const VolumeRef& v, const Snap& sn, int me, uint64_t first, uint64_t units) {
    std::vector<uint8_t> buf(units * kUnit);
    std::vector<uint64_t> g1(units);
    for (uint64_t i = 0; i < units; ++i) g1[i] = sn.gen[first + i].load();
    Status s = io_sync(v, {IoRequest::Op::kRead, first * kUnit, units * kUnit, buf.data(), false});
    if (!s.is_ok()) return fail(v->name() + " read: " + s.to_string());
    for (uint64_t i = 0; i < units && !stop_.load(); ++i) {
      bool written_meanwhile = g1[i] % 2 == 1 || sn.gen[first + i].load() != g1[i];
      check_snapshot_unit(sn, me, first + i, buf.data() + i * kUnit, written_meanwhile);
    }
    reads_.fetch_add(1, std::memory_order_relaxed);
  }

  SnapPtr pick_snapshot(std::mt19937_64& rng, bool writable_only) {
    std::lock_guard lock(model_mu_);
    std::vector<SnapPtr> c;
    for (auto& [id, s] : live_)
      if (!writable_only || !s->frozen) c.push_back(s);
    if (c.empty()) return nullptr;
    return c[rng() % c.size()];
  }

  // A run of 1-2 units this thread owns.
  std::pair<uint64_t, uint64_t> own_units(std::mt19937_64& rng, int me) {
    uint64_t runs = kUnits / kRunUnits / kClients;
    uint64_t run = (rng() % runs) * kClients + me;
    uint64_t off = rng() % kRunUnits;
    return {run * kRunUnits + off, 1 + rng() % (kRunUnits - off)};
  }

  void client(int me, uint64_t seed) {
    std::mt19937_64 rng(seed);
    VolumeRef origin = open("origin");
    if (!origin) return;
    VolumeRef vol;
    SnapPtr snap;
    int uses = 0;
    while (!stop_.load()) {
      int op = rng() % 100;
      if (op < 35) {
        auto [u, n] = own_units(rng, me);
        write_units(origin, nullptr, u, n, rng() % 16 == 0);
      } else if (op < 55) {
        uint64_t n = 1 + rng() % 8;
        read_origin(origin, rng() % (kUnits - n + 1), n);
      } else {
        if (!vol || ++uses > 8) {  // keep a snapshot open for a few requests
          vol.reset();
          snap = pick_snapshot(rng, op >= 85);
          if (!snap) continue;
          auto r = engine_->open_volume("snapshot/" + std::to_string(snap->id));
          if (!r.is_ok()) {  // deleted meanwhile
            if (r.status().code() != Code::kNotFound) fail("open snapshot: " + r.status().to_string());
            continue;
          }
          vol = *r;
          uses = 0;
        }
        if (op >= 85 && !snap->frozen) {
          auto [u, n] = own_units(rng, me);
          write_units(vol, snap, u, n, false);
        } else {
          uint64_t n = 1 + rng() % 8;
          read_snapshot(vol, *snap, me, rng() % (kUnits - n + 1), n);
        }
      }
    }
  }

  VolumeRef open(const std::string& name) {
    auto r = engine_->open_volume(name);
    if (!r.is_ok()) {
      fail(name + ": " + r.status().to_string());
      return nullptr;
    }
    return *r;
  }

  // The writes a snapshot created between logical times t0 and t1 may hold
  // in unit u: the last one acknowledged before t0 (or zeros), or any later
  // one issued before t1.
  bool allowed_at_create(uint64_t u, uint64_t seq, uint64_t t0, uint64_t t1) {
    std::lock_guard lock(model_mu_);
    const auto& h = history_[u];
    size_t last = SIZE_MAX;
    for (size_t i = 0; i < h.size(); ++i)
      if (records_[h[i]].acked < t0) last = i;
    if (seq == (last == SIZE_MAX ? 0 : h[last])) return true;
    for (size_t i = last == SIZE_MAX ? 0 : last + 1; i < h.size() && records_[h[i]].issued < t1; ++i)
      if (h[i] == seq) return true;
    return false;
  }

  // Reads a new snapshot of the origin whole and checks it against the
  // history; records its image.
  void verify_new_snapshot(Snap& sn, uint64_t t0, uint64_t t1) {
    VolumeRef v = open("snapshot/" + std::to_string(sn.id));
    if (!v) return;
    std::vector<uint8_t> buf(kOriginSize);
    Status s = io_sync(v, {IoRequest::Op::kRead, 0, kOriginSize, buf.data(), false});
    if (!s.is_ok()) return fail("reading a new snapshot: " + s.to_string());
    sn.image.resize(kUnits);
    for (uint64_t u = 0; u < kUnits; ++u) {
      auto seq = decode(buf.data() + u * kUnit, u);
      if (!seq || !allowed_at_create(u, *seq, t0, t1))
        return fail(fmt::format("snapshot {} (created between t={} and t={}) unit {} holds {}", sn.id, t0, t1, u,
                                seq ? "write " + std::to_string(*seq)
                                    : "garbage; its sectors hold: " + sectors_of(buf.data() + u * kUnit, u)));
      sn.image[u] = *seq;
    }
    verified_.fetch_add(1, std::memory_order_relaxed);
  }

  void delete_snapshot(const SnapPtr& sn) {
    {
      std::lock_guard lock(model_mu_);
      live_.erase(sn->id);
    }
    // Clients that still hold it open make it busy for a moment.
    auto deadline = Clock::now() + std::chrono::seconds(30);
    for (;;) {
      Status s = engine_->delete_snapshot(sn->id);
      if (s.is_ok()) break;
      if (s.code() != Code::kBusy || Clock::now() > deadline) return fail("delete: " + s.to_string());
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    deletes_.fetch_add(1, std::memory_order_relaxed);
  }

  void control(uint64_t seed, Clock::time_point end) {
    std::mt19937_64 rng(seed);
    bool range = GetParam().format == StoreFormat::kRange;
    const size_t max_live = range ? 8 : 6;
    std::deque<SnapPtr> order;  // oldest first
    while (!stop_.load() && Clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10 + rng() % 40));
      if (order.size() >= max_live || (order.size() > 2 && rng() % 3 == 0)) {
        // Mostly the oldest, sometimes one in the middle.
        size_t i = rng() % 4 == 0 ? rng() % order.size() : 0;
        SnapPtr sn = order[i];
        order.erase(order.begin() + i);
        // A parent goes with its clones gone first (the range store keeps
        // a deleted parent's data for them, but the lineage check wants it).
        for (size_t j = 0; j < order.size();)
          if (order[j]->parent == sn->id) {
            delete_snapshot(order[j]);
            order.erase(order.begin() + j);
          } else {
            ++j;
          }
        delete_snapshot(sn);
        continue;
      }
      auto sn = std::make_shared<Snap>();
      std::optional<SnapshotId> of;
      if (range && !order.empty() && rng() % 3 == 0) {
        const SnapPtr& p = order[rng() % order.size()];
        if (p->parent == 0) of = sn->parent = p->id;
      }
      sn->frozen = !of && rng() % 2 == 0;
      uint64_t t0 = clock_.fetch_add(1);
      auto r = engine_->create_snapshot(of, "");
      uint64_t t1 = clock_.fetch_add(1);
      if (!r.is_ok()) {
        // The bitmask store gets a deleted snapshot's bit back only after
        // its reclaim pass has committed.
        if (!range && r.status().code() == Code::kNoSpace) continue;
        return fail("create: " + r.status().to_string());
      }
      sn->id = r->id;
      sn->own_last.assign(kUnits, 0);
      if (!of) verify_new_snapshot(*sn, t0, t1);
      creates_.fetch_add(1, std::memory_order_relaxed);
      order.push_back(sn);
      std::lock_guard lock(model_mu_);
      live_[sn->id] = sn;
    }
  }

  // The origin becomes a frozen snapshot's image while readers check the
  // frozen snapshots (the target among them).
  void rollback_phase(uint64_t seed) {
    SnapPtr target;
    {
      std::lock_guard lock(model_mu_);
      for (auto& [id, s] : live_)
        if (s->frozen) target = s;
    }
    if (!target) return;
    uint64_t reads_before = reads_.load();
    stop_.store(false);
    std::vector<std::thread> readers;
    for (int t = 0; t < 2; ++t)
      readers.emplace_back([this, t, seed] {
        std::mt19937_64 rng(seed + 100 + t);
        while (!stop_.load()) {
          SnapPtr s = pick_snapshot(rng, false);
          if (!s || !s->frozen) continue;
          auto v = engine_->open_volume("snapshot/" + std::to_string(s->id));
          if (!v.is_ok()) return fail(v.status().to_string());
          uint64_t n = 1 + rng() % 16;
          read_snapshot(*v, *s, -1, rng() % (kUnits - n + 1), n);
        }
      });
    Status s = engine_->start_rollback(target->id);
    if (!s.is_ok()) fail("start_rollback: " + s.to_string());
    if (s.is_ok()) {
      // The origin stays shut while it runs (unless it is already done).
      auto o = engine_->open_volume("origin");
      if (o.is_ok() && engine_->rollback_status().active) fail("the origin opened during a rollback");
      if (!o.is_ok() && o.status().code() != Code::kBusy) fail("opening the origin: " + o.status().to_string());
    }
    if (s.is_ok())
      if (Status w = engine_->wait_rollback(); !w.is_ok()) fail("wait_rollback: " + w.to_string());
    stop_.store(true);
    for (auto& t : readers) t.join();
    if (::testing::Test::HasFailure()) return;
    VolumeRef origin = open("origin");
    if (!origin) return;
    std::vector<uint8_t> buf(kOriginSize);
    ASSERT_TRUE(io_sync(origin, {IoRequest::Op::kRead, 0, kOriginSize, buf.data(), false}).is_ok());
    for (uint64_t u = 0; u < kUnits; ++u)
      ASSERT_EQ(decode(buf.data() + u * kUnit, u), target->image[u]) << "origin unit " << u << " after the rollback";
    fprintf(stderr, "threaded stress: rolled the origin back to snapshot %u (%llu snapshot reads meanwhile)\n",
            target->id, (unsigned long long)(reads_.load() - reads_before));
  }

  LogLevel saved_level_ = LogLevel::kInfo;
  TempDir dir_;
  std::unique_ptr<FileDevice> origin_dev_, store_dev_;
  std::unique_ptr<Engine> engine_;

  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> clock_{1};
  std::atomic<uint64_t> next_seq_{1};
  std::atomic<uint64_t> gen_[kUnits];       // per origin unit: odd while its owner writes it
  std::atomic<uint64_t> last_seq_[kUnits];  // per origin unit: last acknowledged write
  std::atomic<uint64_t> writes_{0}, reads_{0}, creates_{0}, deletes_{0}, verified_{0};
  std::atomic<uint64_t> torn_while_written_{0};  // snapshot reads that raced a write of the same unit

  std::mutex model_mu_;  // guards what follows
  std::unordered_map<uint64_t, WriteRecord> records_;  // by sequence number
  std::vector<std::vector<uint64_t>> history_;         // per origin unit: its writes, in order
  std::map<SnapshotId, SnapPtr> live_;                 // what clients may open

  std::mutex fail_mu_;
  int failures_ = 0;
};

TEST_P(ThreadedStressTest, ClientsSnapshotsDeletesAndRollback) {
  uint64_t seed = env_u64("MULTISNAP_SEED", std::random_device{}());
  uint64_t soak = env_u64("MULTISNAP_SOAK", 1);
  auto seconds = std::chrono::milliseconds(2500 * soak);
  fprintf(stderr, "threaded stress: MULTISNAP_SEED=%llu, %lld ms\n", (unsigned long long)seed,
          (long long)seconds.count());
  SCOPED_TRACE("MULTISNAP_SEED=" + std::to_string(seed));
  auto end = Clock::now() + seconds;
  std::vector<std::thread> clients;
  for (int t = 0; t < kClients; ++t) clients.emplace_back([this, t, seed] { client(t, seed + t); });
  std::thread ctl([&] { control(seed + kClients, end); });
  ctl.join();
  stop_.store(true);
  for (auto& t : clients) t.join();
  EngineStatus st = engine_->status();
  fprintf(stderr,
          "threaded stress: %llu writes (%llu direct), %llu reads (%llu snapshot reads direct), %llu creates (%llu checked), %llu deletes, "
          "%llu chunks copied, %llu commits, %llu snapshot reads raced a write of the same unit\n",
          (unsigned long long)writes_.load(), (unsigned long long)st.counters.direct_writes,
          (unsigned long long)reads_.load(), (unsigned long long)st.counters.direct_reads,
          (unsigned long long)creates_.load(),
          (unsigned long long)verified_.load(), (unsigned long long)deletes_.load(),
          (unsigned long long)st.counters.chunks_copied, (unsigned long long)st.counters.commits,
          (unsigned long long)torn_while_written_.load());
  if (HasFailure()) return;
  EXPECT_GT(writes_.load(), 0u);
  EXPECT_GT(verified_.load(), 0u);
  // Snapshot reads took the caller-thread path too (read_map.h), while
  // chunks were remapped, written and reclaimed.
  EXPECT_GT(st.counters.direct_reads, 0u);
  if (GetParam().io == TestIo::kUring && store_dev_->direct_fd() < 0)
    std::printf("note: the store's file system refused O_DIRECT: copies went through the page cache\n");
  rollback_phase(seed);
  engine_.reset();
  for (auto& p : testing::check_store(*store_dev_)) ADD_FAILURE() << p;
}

std::vector<StressParams> stress_params() {
  std::vector<StressParams> out;
  for (StoreFormat f : {StoreFormat::kRange, StoreFormat::kBitmask}) {
    out.push_back({f, TestIo::kUring, 64 * 1024});
    out.push_back({f, TestIo::kSync, 16 * 1024});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Stores, ThreadedStressTest, ::testing::ValuesIn(stress_params()), [](const auto& info) {
  const StressParams& p = info.param;
  return std::string(store_format_name(p.format)) + "_" + std::to_string(p.chunk / 1024) + "K_" +
         (p.io == TestIo::kUring ? "uring" : "sync");
});

}  // namespace
}  // namespace multisnap
