// Crash replay: run a workload on recorded devices, then for every prefix of
// the recorded writes and flushes, rebuild the devices as they were at that
// point, cut the power there (keeping a random subset of the unflushed
// writes, one of them torn), reopen, and verify: the store opens without
// repair, check is clean, every snapshot acknowledged before the cut is
// there, and every sector of every volume holds a version the model allows.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>

#include "engine/engine_fixture.h"
#include "engine/volume_model.h"
#include "support/sanitizer.h"
#include "util/checksum.h"

namespace multisnap {
namespace {

using testing::kSector;
using testing::VolumeModel;

// Forwards to a MemoryDevice and appends every write and flush to a shared
// log, tagged with the device, so both devices' histories interleave.
struct Recorded {
  int device;
  TraceOp op;
};
class RecordingDevice final : public BlockDevice {
 public:
  RecordingDevice(MemoryDevice& inner, int tag, std::vector<Recorded>* log) : inner_(inner), tag_(tag), log_(log) {}
  uint64_t size() const override { return inner_.size(); }
  Status read(uint64_t o, void* b, size_t l) override { return inner_.read(o, b, l); }
  Status write(uint64_t o, const void* b, size_t l) override {
    MS_TRY(inner_.write(o, b, l));
    auto* p = static_cast<const uint8_t*>(b);
    log_->push_back({tag_, {TraceOp::Kind::kWrite, o, std::vector<uint8_t>(p, p + l)}});
    return Status::ok();
  }
  Status flush() override {
    MS_TRY(inner_.flush());
    log_->push_back({tag_, {TraceOp::Kind::kFlush, 0, {}}});
    return Status::ok();
  }
  Status discard(uint64_t o, uint64_t l) override { return write_zeroes(o, l); }
  Status write_zeroes(uint64_t o, uint64_t l) override {
    std::vector<uint8_t> z(l, 0);
    return write(o, z.data(), z.size());
  }
  std::string describe() const override { return inner_.describe(); }

 private:
  MemoryDevice& inner_;
  int tag_;
  std::vector<Recorded>* log_;
};

// What must hold after a cut inside one workload step.
struct Checkpoint {
  size_t log_end = 0;  // the step's last recorded operation, exclusive
  std::map<SnapshotId, VolumeModel> volumes;  // 0 = origin; as of the step, not yet flushed
  std::optional<SnapshotId> maybe;            // created or deleted by this step: may or may not exist
  std::optional<SnapshotId> created_of;       // for a create: what it is a snapshot of (0 = origin)
};

// An image as its non-zero pages (most of a fresh store is zeros).
using Pages = std::vector<std::pair<uint64_t, std::vector<uint8_t>>>;
Pages nonzero_pages(const std::vector<uint8_t>& image) {
  Pages out;
  for (size_t off = 0; off < image.size(); off += 4096) {
    size_t n = std::min<size_t>(4096, image.size() - off);
    const uint8_t* p = image.data() + off;
    if (std::memcmp(p, p + 1, n - 1) != 0 || p[0] != 0) out.emplace_back(off, std::vector<uint8_t>(p, p + n));
  }
  return out;
}
void load(MemoryDevice& dev, const Pages& pages) {
  for (auto& [off, bytes] : pages) dev.poke(off, bytes.data(), bytes.size());
}

// (format, chunk size, metadata pool: 0 = the default, else a tiny one the
// metadata outgrows into borrowed data chunks)
class CrashReplay : public ::testing::TestWithParam<std::tuple<StoreFormat, uint32_t, uint64_t>> {};

TEST_P(CrashReplay, EveryPrefixRecovers) {
  const StoreFormat format = std::get<0>(GetParam());
  const uint32_t chunk = std::get<1>(GetParam());
  const uint64_t pool = std::get<2>(GetParam());
  const uint64_t size = 16 * chunk;
  MemoryDevice origin_mem(size, "origin"), store_mem(16 << 20, "store");
  CreateOptions co;
  co.chunk_size = chunk;
  co.format = format;
  co.origin_size = size;
  if (pool) co.metadata_size = pool;
  ASSERT_TRUE(format_store(store_mem, co).is_ok());
  ASSERT_TRUE(store_mem.flush().is_ok());
  // The starting images (everything formatted is flushed).
  std::vector<uint8_t> origin0(size), store0(store_mem.size());
  ASSERT_TRUE(origin_mem.read(0, origin0.data(), size).is_ok());
  ASSERT_TRUE(store_mem.read(0, store0.data(), store0.size()).is_ok());

  std::vector<Recorded> log;
  RecordingDevice origin(origin_mem, 0, &log), store(store_mem, 1, &log);
  std::vector<Checkpoint> checkpoints;
  uint64_t max_borrowed = 0;
  {
    EngineOptions eo;
    eo.threaded = false;
    eo.copy_slots = 0;  // automatic: the pipeline at full depth (1024 slots with 4 KiB chunks)
    auto engine = std::move(Engine::open(origin, store, eo, make_sync_io_context())).value();
    std::map<SnapshotId, VolumeModel> vols;
    std::map<SnapshotId, VolumeRef> refs;
    std::map<SnapshotId, SnapshotId> parent;
    vols[0].data.assign(size, 0);
    vols[0].durable = vols[0].data;
    refs[0] = *engine->open_volume("origin");
    std::mt19937_64 rng(chunk);
    auto sync_io = [&](SnapshotId v, IoRequest io) {
      bool done = false;
      Status st;
      engine->submit(refs[v], io, [&](Status s) { st = s; done = true; });
      while (!done) engine->poll();
      return st;
    };
    for (int step = 0; step < 70; ++step) {
      Checkpoint cp;
      int r = static_cast<int>(rng() % 100);
      if (r < 60) {  // writes or zeroings of up to three volumes at once (different volumes)
        std::vector<SnapshotId> targets;
        for (auto& [id, m] : vols) targets.push_back(id);
        std::shuffle(targets.begin(), targets.end(), rng);
        targets.resize(std::min<size_t>(targets.size(), 1 + rng() % 3));
        std::vector<std::vector<uint8_t>> bufs;
        bufs.reserve(targets.size());  // the requests point into them
        std::vector<std::pair<SnapshotId, IoRequest>> batch;
        for (SnapshotId id : targets) {
          VolumeModel& m = vols[id];
          uint64_t len = kSector * (1 + rng() % (3 * chunk / kSector));
          uint64_t off = (rng() % ((size - len) / kSector + 1)) * kSector;
          IoRequest io{IoRequest::Op::kWrite, off, len, nullptr, rng() % 8 == 0};
          if (rng() % 10 == 0) {
            io.op = IoRequest::Op::kWriteZeroes;
            std::memset(m.data.data() + off, 0, len);
          } else {
            bufs.push_back(testing::random_bytes(rng, len));
            io.buf = bufs.back().data();
            std::memcpy(m.data.data() + off, io.buf, len);
          }
          m.note_versions(off, len);
          batch.emplace_back(id, io);
        }
        cp.volumes = vols;
        size_t done = 0;
        for (auto& [id, io] : batch)
          engine->submit(refs[id], io, [&done](Status st) {
            EXPECT_TRUE(st.is_ok()) << st.to_string();
            ++done;
          });
        while (done < batch.size()) engine->poll();
        ASSERT_FALSE(::testing::Test::HasFailure());
      } else if (r < 75 && vols.size() < 6) {  // a snapshot of the origin or of a snapshot
        std::optional<SnapshotId> of;
        auto pick = std::next(vols.begin(), static_cast<long>(rng() % vols.size()));
        if (pick->first != 0 && parent[pick->first] == 0 && format == StoreFormat::kRange) of = pick->first;
        cp.volumes = vols;
        auto s = engine->create_snapshot(of, "");
        ASSERT_TRUE(s.is_ok()) << s.status().to_string();
        cp.maybe = s->id;
        cp.created_of = of.value_or(0);
        vols[s->id].data = vols[of.value_or(0)].data;
        parent[s->id] = of.value_or(0);
        refs[s->id] = *engine->open_volume("snapshot/" + std::to_string(s->id));
        for (auto& [id, m] : vols) m.flush_point();
      } else if (r < 85 && vols.size() > 1) {  // delete
        auto it = std::next(vols.begin(), 1 + static_cast<long>(rng() % (vols.size() - 1)));
        SnapshotId id = it->first;
        cp.volumes = vols;
        cp.maybe = id;
        refs.erase(id);
        ASSERT_TRUE(engine->delete_snapshot(id).is_ok());
        vols.erase(id);
      } else {  // flush
        cp.volumes = vols;
        ASSERT_TRUE(sync_io(0, {IoRequest::Op::kFlush, 0, 0, nullptr, false}).is_ok());
        for (auto& [id, m] : vols) m.flush_point();
      }
      cp.log_end = log.size();
      checkpoints.push_back(std::move(cp));
      max_borrowed = std::max(max_borrowed, engine->status().store.meta_chunks_borrowed);
    }
    refs.clear();
  }  // the engine's own shutdown is recorded too; cuts beyond the last step are not checked
  fprintf(stderr, "log %zu ops, %zu steps, at most %llu data chunks holding metadata\n", log.size(),
          checkpoints.size(), (unsigned long long)max_borrowed);
  if (pool) {
    EXPECT_GT(max_borrowed, 0u) << "the tiny pool never had to borrow";
  }
  ASSERT_GT(log.size(), 100u);

  const Pages origin_pages = nonzero_pages(origin0), store_pages = nonzero_pages(store0);
  // Replay every prefix, cut two ways: keeping a random half of the
  // unflushed writes (variant 0) or none of them (variant 1). A sanitizer
  // build (5-10x slower) cuts each prefix once, the two ways alternating
  // from one prefix to the next; the Release pass cuts every prefix both ways.
  const int variants = testing::kSanitizerBuild ? 1 : 2;
  fprintf(stderr, "  %s\n",
          variants == 2 ? "every prefix cut both ways"
                        : "sanitizer build: every prefix cut once, the two ways alternating (Release: both ways)");
  size_t step = 0;
  std::mt19937_64 rng(99);
  int verified = 0, rolled_back_cuts = 0;
  // One read buffer for every volume of every cut: a fresh one each time
  // was a fresh mapping to fault in and zero under ASan (a tenth of its time).
  std::vector<uint8_t> got(size);
  // The devices as of the prefix, each operation applied once; every cut
  // is a crashed copy of them (the same cut as replaying the prefix onto
  // fresh devices and crashing those, without the replay).
  MemoryDevice prefix_o(size, "origin"), prefix_s(store0.size(), "store");
  load(prefix_o, origin_pages);
  load(prefix_s, store_pages);
  size_t applied = 0;
  for (size_t k = 0; k <= checkpoints.back().log_end; ++k) {
    while (checkpoints[step].log_end < k) ++step;
    const Checkpoint& cp = checkpoints[step];
    for (; applied < k; ++applied) (log[applied].device == 0 ? prefix_o : prefix_s).apply(log[applied].op);
    for (int n = 0; n < variants; ++n) {
      const int variant = variants == 2 ? n : static_cast<int>(k % 2);
      SCOPED_TRACE("prefix " + std::to_string(k) + " of " + std::to_string(log.size()) + ", workload step " +
                   std::to_string(step) + ", variant " + std::to_string(variant));
      CrashOptions crash;
      crash.keep_probability = variant == 0 ? 0.5 : 0.0;
      std::unique_ptr<MemoryDevice> o = prefix_o.crashed_copy(rng, crash);
      std::unique_ptr<MemoryDevice> s = prefix_s.crashed_copy(rng, crash);
      for (auto& p : testing::check_store(*s)) ADD_FAILURE() << p;
      EngineOptions eo;
      eo.threaded = false;
      auto e = Engine::open(*o, *s, eo, make_sync_io_context());
      ASSERT_TRUE(e.is_ok()) << e.status().to_string();
      auto list = (*e)->list_snapshots();
      ASSERT_TRUE(list.is_ok());
      std::set<SnapshotId> present;
      for (auto& info : *list) present.insert(info.id);
      for (auto& [id, m] : cp.volumes) {
        if (id == 0) continue;
        if (cp.maybe == id) continue;
        ASSERT_TRUE(present.count(id)) << "snapshot " << id << " vanished";
      }
      for (SnapshotId id : present) {
        bool known = cp.volumes.count(id) || (cp.maybe == id && cp.created_of);
        ASSERT_TRUE(known) << "snapshot " << id << " appeared from nowhere";
      }
      bool rolled_back = false;
      auto verify = [&](const std::string& name, const VolumeModel& m) {
        auto v = (*e)->open_volume(name);
        ASSERT_TRUE(v.is_ok());
        bool done = false;
        Status st;
        (*e)->submit(*v, {IoRequest::Op::kRead, 0, size, got.data(), false}, [&](Status x) { st = x; done = true; });
        while (!done) (*e)->poll();
        ASSERT_TRUE(st.is_ok());
        std::string why = m.explain(got);
        ASSERT_TRUE(why.empty()) << name << ": " << why;
        rolled_back |= got != m.data;
      };
      verify("origin", cp.volumes.at(0));
      for (SnapshotId id : present) {
        if (cp.volumes.count(id)) {
          verify("snapshot/" + std::to_string(id), cp.volumes.at(id));
        } else {  // created at the cut: exactly what its parent held then
          VolumeModel exact = cp.volumes.at(*cp.created_of);
          exact.flush_point();
          verify("snapshot/" + std::to_string(id), exact);
        }
      }
      ++verified;
      rolled_back_cuts += rolled_back;
    }
  }
  fprintf(stderr, "  %d cuts verified over %zu recorded operations; %d lost unflushed writes\n", verified,
          log.size(), rolled_back_cuts);
}

INSTANTIATE_TEST_SUITE_P(Stores, CrashReplay,
                         ::testing::Combine(::testing::Values(StoreFormat::kRange, StoreFormat::kBitmask),
                                            ::testing::Values(4096u, 65536u), ::testing::Values(0ull, 4096ull)),
                         [](const auto& info) {
                           return std::string(store_format_name(std::get<0>(info.param))) + "_" +
                                  std::to_string(std::get<1>(info.param) / 1024) + "K" +
                                  (std::get<2>(info.param) ? "_tiny_pool" : "");
                         });

}  // namespace
}  // namespace multisnap
