// The randomized model-based test: thousands of steps of origin and
// snapshot I/O (several requests in flight at once, completed in random
// order), snapshot create (of the origin and of snapshots), delete, flush,
// clean reopen and power cuts at random points, against a model that is a
// byte array per volume.
//
// After a power cut the store must open without repair, `check` must be
// clean, the set of snapshots must be exactly the acknowledged one, and
// every 512-byte sector of every volume must hold a version the model
// allows: the one as of the last flush point, or one written since.
//
// MULTISNAP_SEED=n runs one seed; MULTISNAP_SOAK=n runs n times more steps.
#include <gtest/gtest.h>

#include <map>
#include <unordered_map>
#include <unordered_set>

#include "engine/engine_fixture.h"
#include "engine/volume_model.h"
#include "support/sanitizer.h"
#include "util/checksum.h"

namespace multisnap {
namespace {

using testing::EngineHarness;
using testing::EngineParams;

using testing::kSector;
using testing::VolumeModel;

struct Snap {
  SnapshotId parent = kOriginId;
  VolumeModel model;
  VolumeRef vol;
};

struct Pending {  // one request of a batch
  VolumeRef vol;
  VolumeModel* model;
  IoRequest io;
  std::vector<uint8_t> buf;
  bool done = false;
  Status status;
};

class ModelRun {
 public:
  ModelRun(const EngineParams& p, uint64_t seed) : h_(p), rng_(seed), chunk_(p.chunk), size_(p.origin_size) {
    h_.open();
    origin_.data.assign(size_, 0);
    origin_.flush_point();
    origin_vol_ = h_.volume("origin");
  }

  void run(int steps) {
    for (step_ = 0; step_ < steps && !::testing::Test::HasFatalFailure(); ++step_) {
      int r = static_cast<int>(rng_() % 100);
      if (r < 55) batch(false);
      else if (r < 64) create();
      else if (r < 70) remove();
      else if (r < 77) flush();
      else if (r < 81) reopen();
      else if (r < 86) crash();
      else if (r < 89) rollback();
      else if (r < 92) compare_all();
      else for (int i = 0; i < 20; ++i) h_.engine().poll();
      if (r < 55) max_borrowed_ = std::max(max_borrowed_, h_.engine().status().store.meta_chunks_borrowed);
    }
    compare_all();
    release_volumes();
    h_.close();
    expect_check_clean("final");
    fprintf(stderr, "  %d steps: %d requests, %d snapshots created, %d crashes (%d with requests in flight), "
            "%llu sectors rolled back by crashes, %llu chunks copied, %d rollbacks (%d cut by a crash), "
            "at most %llu data chunks holding metadata\n", step_,
            requests_, creates_, crashes_, crashes_inflight_, (unsigned long long)rolled_back_,
            (unsigned long long)copies_, rollbacks_, rollbacks_cut_, (unsigned long long)max_borrowed_);
  }
  uint64_t max_borrowed() const { return max_borrowed_; }

 private:
  std::string where() const { return "step " + std::to_string(step_); }

  // A random range, sector aligned most of the time.
  std::pair<uint64_t, uint64_t> random_range() {
    uint64_t max_len = chunk_ * 5 / 2;
    uint64_t len = 1 + rng_() % max_len;
    uint64_t off = rng_() % (size_ - len + 1);
    if (rng_() % 5 != 0) {
      off = off / kSector * kSector;
      len = std::max<uint64_t>(kSector, len / kSector * kSector);
      if (off + len > size_) len = size_ - off;
    }
    // Sometimes whole, aligned chunks (they take other paths).
    if (rng_() % 6 == 0) {
      off = off / chunk_ * chunk_;
      len = std::min<uint64_t>(size_ - off, chunk_ * (1 + rng_() % 2));
    }
    return {off, len};
  }

  void batch(bool crash_midway) {
    std::vector<std::unique_ptr<Pending>> reqs;
    // Per volume: ranges read and written in this batch (reads and writes of
    // the same volume must not overlap; across volumes anything goes).
    std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> touched;
    int n = 1 + static_cast<int>(rng_() % 8);
    for (int i = 0; i < n; ++i) {
      auto p = std::make_unique<Pending>();
      pick_volume(&p->vol, &p->model);
      int kind = static_cast<int>(rng_() % 100);
      p->io.op = kind < 45 ? IoRequest::Op::kWrite
                 : kind < 82 ? IoRequest::Op::kRead
                 : kind < 91 ? IoRequest::Op::kTrim
                 : kind < 98 ? IoRequest::Op::kWriteZeroes
                             : IoRequest::Op::kFlush;
      if (p->io.op != IoRequest::Op::kFlush) {
        auto [off, len] = random_range();
        auto& mine = touched[p->vol->name()];
        bool clash = false;
        for (auto& [o, l] : mine) clash |= off < o + l && o < off + len;
        if (clash) continue;
        mine.emplace_back(off, len);
        p->io.offset = off;
        p->io.length = len;
        p->io.fua = rng_() % 10 == 0;
        p->buf.resize(len);
        if (p->io.op == IoRequest::Op::kWrite) p->buf = testing::random_bytes(rng_, len);
        p->io.buf = p->buf.data();
      }
      reqs.push_back(std::move(p));
    }
    // What reads must return, and which versions may reach the disk.
    std::vector<std::vector<uint8_t>> expected(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      Pending& p = *reqs[i];
      if (p.io.op == IoRequest::Op::kRead)
        expected[i].assign(p.model->data.begin() + p.io.offset, p.model->data.begin() + p.io.offset + p.io.length);
    }
    for (auto& p : reqs) apply_write(*p, /*record_only=*/true);
    requests_ += static_cast<int>(reqs.size());
    for (auto& p : reqs) {
      Pending* raw = p.get();
      h_.engine().submit(p->vol, p->io, [raw](Status s) {
        raw->status = s;
        raw->done = true;
      });
    }
    if (crash_midway) {
      int polls = static_cast<int>(rng_() % 12);
      for (int i = 0; i < polls; ++i) h_.engine().poll();
      for (auto& p : reqs) abandoned_.push_back(std::move(p));  // completed (with errors) at close
      return;  // the caller cuts the power with these in flight
    }
    h_.engine().run_until_idle();
    for (size_t i = 0; i < reqs.size(); ++i) {
      Pending& p = *reqs[i];
      ASSERT_TRUE(p.done) << where();
      ASSERT_TRUE(p.status.is_ok()) << where() << ": " << p.status.to_string();
      if (p.io.op == IoRequest::Op::kRead) {
        ASSERT_TRUE(p.buf == expected[i]) << where() << ": read of " << p.vol->name() << " at " << p.io.offset
                                           << "+" << p.io.length << " differs from the model";
      }
    }
  }

  // Applies a write-like request to the model (and records its versions).
  void apply_write(Pending& p, bool) {
    VolumeModel& m = *p.model;
    const uint64_t off = p.io.offset, len = p.io.length;
    switch (p.io.op) {
      case IoRequest::Op::kWrite: m.apply(off, p.buf.data(), len); break;
      case IoRequest::Op::kWriteZeroes: m.apply(off, nullptr, len); break;
      case IoRequest::Op::kTrim:
        if (p.vol->is_origin()) {
          m.apply(off, nullptr, len);  // a discard of the memory origin zeroes
        } else {
          // Snapshots zero the whole chunks inside the range; parts are left.
          uint64_t first = (off + chunk_ - 1) / chunk_, end = (off + len) / chunk_;
          for (uint64_t c = first; c < end; ++c) m.apply(c * chunk_, nullptr, std::min<uint64_t>(chunk_, size_ - c * chunk_));
          if (off + len == size_ && size_ % chunk_ && (size_ / chunk_) * chunk_ >= off)
            m.apply((size_ / chunk_) * chunk_, nullptr, size_ % chunk_);
        }
        break;
      default: return;
    }
    m.note_versions(off, len);
  }

  void pick_volume(VolumeRef* v, VolumeModel** m) {
    if (snaps_.empty() || rng_() % 2 == 0) {
      *v = origin_vol_;
      *m = &origin_;
      return;
    }
    auto it = std::next(snaps_.begin(), static_cast<long>(rng_() % snaps_.size()));
    *v = it->second.vol;
    *m = &it->second.model;
  }

  void all_flush_points() {
    origin_.flush_point();
    for (auto& [id, s] : snaps_) s.model.flush_point();
  }

  void create() {
    if (snaps_.size() >= 10) return remove();
    std::optional<SnapshotId> of;
    if (!snaps_.empty() && rng_() % 3 == 0) {
      auto it = std::next(snaps_.begin(), static_cast<long>(rng_() % snaps_.size()));
      of = it->first;
    }
    auto r = h_.engine().create_snapshot(of, rng_() % 3 ? "" : "s" + std::to_string(step_));
    bool bitmask = h_.params().format == StoreFormat::kBitmask;
    if (of && (bitmask || snaps_[*of].parent != kOriginId)) {
      ASSERT_EQ(r.status().code(), Code::kNotSupported) << where();
      return;
    }
    if (bitmask && r.status().code() == Code::kNoSpace) return;  // 64 bits live or being swept
    ASSERT_TRUE(r.is_ok()) << where() << ": " << r.status().to_string();
    Snap s;
    s.parent = of.value_or(kOriginId);
    s.model.data = of ? snaps_[*of].model.data : origin_.data;
    s.vol = h_.volume("snapshot/" + std::to_string(r->id));
    snaps_[r->id] = std::move(s);
    ++creates_;
    all_flush_points();  // create flushes everything first
  }

  void remove() {
    if (snaps_.empty()) return;
    auto it = std::next(snaps_.begin(), static_cast<long>(rng_() % snaps_.size()));
    SnapshotId id = it->first;
    ASSERT_EQ(h_.engine().delete_snapshot(id).code(), Code::kBusy) << where();
    it->second.vol.reset();
    ASSERT_TRUE(h_.engine().delete_snapshot(id).is_ok()) << where();
    snaps_.erase(it);
  }

  void flush() {
    VolumeRef v;
    VolumeModel* m;
    pick_volume(&v, &m);
    ASSERT_TRUE(h_.io(v, IoRequest::Op::kFlush, 0, 0).is_ok()) << where();
    all_flush_points();
  }

  std::vector<uint8_t> read_all(const VolumeRef& v) { return h_.read(v, 0, size_); }

  void compare_all() {
    ASSERT_TRUE(read_all(origin_vol_) == origin_.data) << where() << ": origin differs";
    for (auto& [id, s] : snaps_)
      ASSERT_TRUE(read_all(s.vol) == s.model.data) << where() << ": snapshot " << id << " differs";
  }

  void release_volumes() {
    origin_vol_.reset();
    for (auto& [id, s] : snaps_) s.vol.reset();
  }

  void reopen_volumes() {
    origin_vol_ = h_.volume("origin");
    for (auto& [id, s] : snaps_) s.vol = h_.volume("snapshot/" + std::to_string(id));
    auto list = h_.engine().list_snapshots();
    ASSERT_TRUE(list.is_ok());
    ASSERT_EQ(list->size(), snaps_.size()) << where() << ": the set of snapshots changed";
  }

  void expect_check_clean(const std::string& when) {
    for (auto& p : h_.check()) ADD_FAILURE() << where() << " (" << when << "): " << p;
  }

  void reopen() {
    release_volumes();
    h_.close();
    expect_check_clean("clean reopen");
    h_.open();
    reopen_volumes();
  }

  void crash() {
    ++crashes_;
    if (rng_() % 2) {
      batch(true);  // requests in flight at the moment of the cut
      ++crashes_inflight_;
    }
    copies_ += h_.engine().status().counters.chunks_copied;
    h_.cut_power();
    release_volumes();
    h_.close();
    h_.restore_power();
    abandoned_.clear();
    CrashOptions co;
    co.keep_probability = (rng_() % 3) / 2.0;  // 0, 0.5 or 1
    h_.origin_mem().crash(rng_, co);
    h_.store_mem().crash(rng_, co);
    expect_check_clean("after a crash");
    h_.open();
    reopen_volumes();
    if (::testing::Test::HasFatalFailure()) return;
    auto adopt = [&](const VolumeRef& v, VolumeModel& m, const std::string& what) {
      auto got = read_all(v);
      std::string bad = m.explain(got);
      ASSERT_EQ(bad, "") << where() << ": " << what << " after a crash";
      for (uint64_t i = 0; i < got.size(); i += kSector)
        rolled_back_ += std::memcmp(&got[i], &m.data[i], kSector) != 0;
      m.data = got;
      m.flush_point();
    };
    adopt(origin_vol_, origin_, "origin");
    for (auto& [id, s] : snaps_) adopt(s.vol, s.model, "snapshot " + std::to_string(id));
  }

  // Rollback to a random snapshot, sometimes cut by a power cut part way:
  // the store reopens, the rollback finishes by itself, and then the origin
  // is exactly the snapshot while every snapshot is as it was.
  void rollback() {
    if (snaps_.empty()) return;
    auto it = std::next(snaps_.begin(), static_cast<long>(rng_() % snaps_.size()));
    const SnapshotId id = it->first;
    origin_vol_.reset();
    Status s = h_.engine().start_rollback(id);
    ASSERT_TRUE(s.is_ok()) << where() << ": " << s.to_string();
    ++rollbacks_;
    // The target is read-only meanwhile, and the origin cannot be opened.
    if (h_.engine().rollback_status().active) {
      ASSERT_EQ(h_.engine().open_volume("origin").status().code(), Code::kBusy) << where();
    }
    if (rng_() % 2) {
      ++rollbacks_cut_;
      ++crashes_;
      for (int i = static_cast<int>(rng_() % 40); i > 0; --i) h_.engine().poll();
      h_.cut_power();
      release_volumes();
      h_.close();
      h_.restore_power();
      abandoned_.clear();
      CrashOptions co;
      co.keep_probability = (rng_() % 3) / 2.0;
      h_.origin_mem().crash(rng_, co);
      h_.store_mem().crash(rng_, co);
      expect_check_clean("rollback cut by a crash");
      h_.open();  // resumes the rollback where its last checkpoint was
      s = h_.engine().wait_rollback();
      ASSERT_TRUE(s.is_ok()) << where() << ": " << s.to_string();
      reopen_volumes();
      if (::testing::Test::HasFatalFailure()) return;
      for (auto& [sid, snap] : snaps_) {
        auto got = read_all(snap.vol);
        ASSERT_TRUE(got == snap.model.data) << where() << ": snapshot " << sid << " changed across a rollback cut";
      }
    } else {
      s = h_.engine().wait_rollback();
      ASSERT_TRUE(s.is_ok()) << where() << ": " << s.to_string();
      origin_vol_ = h_.volume("origin");
    }
    origin_.data = snaps_[id].model.data;
    origin_.flush_point();  // a finished rollback is durable
    ASSERT_TRUE(read_all(origin_vol_) == origin_.data) << where() << ": the origin is not snapshot " << id;
  }

  EngineHarness h_;
  std::mt19937_64 rng_;
  uint64_t chunk_, size_;
  int step_ = 0;
  VolumeModel origin_;
  VolumeRef origin_vol_;
  std::map<SnapshotId, Snap> snaps_;
  std::vector<std::unique_ptr<Pending>> abandoned_;
  int requests_ = 0, creates_ = 0, crashes_ = 0, crashes_inflight_ = 0, rollbacks_ = 0, rollbacks_cut_ = 0;
  uint64_t max_borrowed_ = 0;
  uint64_t rolled_back_ = 0, copies_ = 0;
};

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = getenv(name);
  return v ? std::stoull(v) : fallback;
}

// Sanitizer builds run a fraction of the work: they are there for memory and
// undefined-behaviour errors; the Release pass has the randomized depth.
// A case runs a fifth of its steps per seed there (still dozens of creates,
// crashes and rollbacks per seed), or, with a tiny metadata pool, its whole
// length (the borrowing only starts once enough metadata has piled up) for
// a third of the seeds.
int sanitized_steps(int steps) { return testing::kSanitizerBuild ? std::max(100, steps / 5) : steps; }

struct ModelCase {
  std::string name;
  EngineParams params;
  int steps;
};

class ModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelTest, RandomizedAgainstTheModel) {
  const ModelCase& c = GetParam();
  uint64_t soak = env_u64("MULTISNAP_SOAK", 1);
  std::vector<uint64_t> seeds = {1, 2, 3};
  if (getenv("MULTISNAP_SEED")) seeds = {env_u64("MULTISNAP_SEED", 1)};
  else if (soak > 1)
    for (uint64_t s = 4; s < 3 + soak * 3; ++s) seeds.push_back(s);
  const bool tiny_pool = c.params.metadata_size.has_value();
  const int steps = tiny_pool ? c.steps : sanitized_steps(c.steps);
  if (testing::kSanitizerBuild && tiny_pool && !getenv("MULTISNAP_SEED")) {
    std::vector<uint64_t> third;
    for (size_t i = 0; i < seeds.size(); i += 3) third.push_back(seeds[i]);
    seeds = third;
  }
  fprintf(stderr, "  %zu seed(s) of %d steps%s\n", seeds.size(), steps,
          testing::kSanitizerBuild ? " (sanitizer build: a fifth or a third of the Release pass's work)" : "");
  uint64_t most_borrowed = 0;
  for (uint64_t seed : seeds) {
    SCOPED_TRACE("MULTISNAP_SEED=" + std::to_string(seed) + " (rerun with it to reproduce)");
    EngineParams p = c.params;
    p.seed = seed;
    ModelRun run(p, seed);
    run.run(steps);
    most_borrowed = std::max<uint64_t>(most_borrowed, run.max_borrowed());
    if (::testing::Test::HasFailure()) {
      fprintf(stderr, "model test %s failed with MULTISNAP_SEED=%llu\n", c.name.c_str(), (unsigned long long)seed);
      return;
    }
  }
  // The tiny pool is there to make metadata live in borrowed data chunks.
  if (c.params.metadata_size) {
    EXPECT_GT(most_borrowed, 0u) << "the tiny pool never had to borrow";
  }
}

std::vector<ModelCase> model_cases() {
  std::vector<ModelCase> out;
  for (StoreFormat f : {StoreFormat::kRange, StoreFormat::kBitmask}) {
    std::string n = f == StoreFormat::kRange ? "Range" : "Bitmask";
    out.push_back({n + "4K", {4096, 1 << 20, 48 << 20, 1 << 20, TestIo::kReordering, 1, 8, f}, 1500});
    out.push_back({n + "64K", {65536, 2 << 20, 96 << 20, 1 << 20, TestIo::kReordering, 1, 8, f}, 1000});
    out.push_back({n + "4KTinyCache", {4096, 1 << 20, 48 << 20, 16 * 4096, TestIo::kReordering, 1, 2, f}, 1000});
    // A 64 KiB metadata pool: metadata lives in borrowed data chunks, through
    // power cuts, deletes and reclaim handing them back.
    EngineParams tiny{4096, 1 << 20, 48 << 20, 1 << 20, TestIo::kReordering, 1, 8, f};
    tiny.metadata_size = 64 << 10;
    out.push_back({n + "4KTinyMetadataPool", tiny, 1000});
    // Automatic copy slots (1024 with 4 KiB chunks, 64 with 64 KiB): the
    // copy pipeline at full depth, runs across requests.
    out.push_back({n + "4KFullDepth", {4096, 1 << 20, 48 << 20, 1 << 20, TestIo::kReordering, 1, 0, f}, 1000});
    out.push_back({n + "64KFullDepth", {65536, 2 << 20, 96 << 20, 1 << 20, TestIo::kReordering, 1, 0, f}, 800});
    // Every origin write through the (reordering) I/O context, none made
    // by the engine thread itself: requests in flight at the power cuts.
    EngineParams through_io{4096, 1 << 20, 48 << 20, 1 << 20, TestIo::kReordering, 1, 8, f};
    through_io.inline_origin_write_max = 0;
    out.push_back({n + "4KOriginThroughIo", through_io, 1000});
    out.push_back({n + "4KSyncIo", {4096, (1 << 20) + 4096 * 3 + 1024, 48 << 20, 1 << 20, TestIo::kSync, 1, 8, f},
                   800});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Stores, ModelTest, ::testing::ValuesIn(model_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace multisnap
