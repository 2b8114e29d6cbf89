// core_bench: the figures issue #2 asks for, in one run.
//
//  1. Origin first-write cost with 1, 10,000 and 100,000 live snapshots
//     (engine, in-process, sparse files on tmpfs so the disk's flush latency
//     does not hide the algorithm): goal flat within 10%. Then the same for
//     both stores at 1, 16 and 64 snapshots, with delete, reclaim and
//     metadata bytes per exception (issue #4).
//  2. Snapshot create cost, in-process, at 0 / 10,000 / 100,000 existing
//     snapshots (in memory, and on a real file where fdatasync dominates).
//  3. Peak RSS while a range store on a sparse file grows to 10 million
//     exceptions, with a 64 MiB metadata cache: goal cache + a constant.
//  4. (--space-only) `snapshot list --space`: the engine's space pass at
//     100,000 snapshots and at 10 million exceptions.
//
// Usage: core_bench [--snapshots 1,10000,100000] [--writes 2000]
//                   [--exceptions 10000000] [--dir DIR] [--io-dir /dev/shm|memory]
//                   [--skip-rss] [--json FILE]
//        core_bench --space-only [--snapshots 100000] [--space-exceptions 10000000] [--dir DIR]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "io/file_device.h"
#include "support/memory_device.h"

namespace multisnap {
namespace {

using Clock = std::chrono::steady_clock;
double us_since(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
long rss_kib() {  // current resident set, from /proc
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}
long peak_rss_kib() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}
void die(const Status& s, const char* what) {
  if (s.is_ok()) return;
  fprintf(stderr, "core_bench: %s: %s\n", what, s.to_string().c_str());
  exit(1);
}

struct Setup {
  std::unique_ptr<BlockDevice> origin, store;
  std::unique_ptr<Engine> engine;
  VolumeRef vol;
};

// Where the first-write and store-comparison runs keep their devices: sparse
// files in this directory (default /dev/shm: real syscalls and page cache,
// no disk latency), or "memory" for MemoryDevice. MemoryDevice's own page
// allocation (a malloc and page faults per 4 KiB) dominates its figures, so
// files on tmpfs measure the engine and store more faithfully.
std::string g_io_dir = "/dev/shm";

Setup make_engine(uint64_t origin_size, uint64_t store_size, uint32_t chunk, StoreFormat format = StoreFormat::kRange,
                  const std::string& io_dir = g_io_dir) {
  Setup s;
  if (io_dir == "memory") {
    s.origin = std::make_unique<MemoryDevice>(origin_size, "origin");
    s.store = std::make_unique<MemoryDevice>(store_size, "store");
  } else {
    static int seq = 0;
    auto open = [&](const char* what, uint64_t size) {
      std::string path = fmt::format("{}/core-bench-{}-{}-{}.img", io_dir, getpid(), what, seq++);
      FileDeviceOptions fo;
      fo.create = true;
      fo.create_size = size;
      auto d = FileDevice::open(path, fo);
      die(d.status(), "open a device file");
      unlink(path.c_str());  // gone when closed
      return std::move(d).value();
    };
    s.origin = open("origin", origin_size);
    s.store = open("store", store_size);
  }
  CreateOptions o;
  o.chunk_size = chunk;
  o.origin_size = origin_size;
  o.format = format;
  die(format_store(*s.store, o), "format");
  EngineOptions eo;
  auto e = Engine::open(*s.origin, *s.store, eo, make_sync_io_context());
  die(e.status(), "open");
  s.engine = std::move(e).value();
  s.vol = *s.engine->open_volume("origin");
  return s;
}

Status sync_write(Engine& e, const VolumeRef& v, uint64_t off, std::vector<uint8_t>& buf) {
  std::promise<Status> p;
  auto f = p.get_future();
  e.submit(v, {IoRequest::Op::kWrite, off, buf.size(), buf.data(), false}, [&](Status s) { p.set_value(s); });
  return f.get();
}

// Median microseconds of a 4 KiB write into a chunk not written since the
// last snapshot (a copy and a commit each), with `snaps` live snapshots.
nlohmann::json first_write_cost(std::vector<uint64_t> counts, int writes, StoreFormat format = StoreFormat::kRange,
                                bool quiet = false) {
  nlohmann::json out = nlohmann::json::array();
  const uint32_t chunk = 64 * 1024;
  // The first run pays for a cold heap (page faults): run it twice and
  // report the second.
  counts.insert(counts.begin(), counts.front());
  bool warmup = true;
  for (uint64_t n : counts) {
    Setup s =
        make_engine(uint64_t(writes) * 4 * chunk, uint64_t(writes) * 4 * chunk + (256 << 20), chunk, format);
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < n; ++i) die(s.engine->create_snapshot(std::nullopt, "").status(), "snapshot");
    double create_s = us_since(t0) / 1e6;
    std::vector<uint8_t> buf(4096, 0x5a);
    std::vector<double> costs;
    for (int round = 0; round < 3; ++round) {
      std::vector<double> t;
      for (int i = 0; i < writes; ++i) {
        uint64_t c = uint64_t(round) * writes + i;
        auto w0 = Clock::now();
        die(sync_write(*s.engine, s.vol, c * chunk, buf), "write");
        t.push_back(us_since(w0));
      }
      costs.push_back(median(t));
    }
    double us = median(costs);
    auto st = s.engine->status();
    if (warmup) {
      warmup = false;
      continue;
    }
    if (!quiet)
      printf("  %7llu snapshots: first write %7.1f us (median of 3 x %d), %llu copies; creating them took %.1f s\n",
             (unsigned long long)n, us, writes, (unsigned long long)st.counters.chunks_copied, create_s);
    out.push_back({{"snapshots", n}, {"first_write_us", us}, {"chunks_copied", st.counters.chunks_copied}});
  }
  return out;
}

nlohmann::json create_cost(const std::vector<uint64_t>& counts, const std::string& dir) {
  nlohmann::json out = nlohmann::json::array();
  for (bool on_file : {false, true}) {
    Setup s;
    std::string opath = dir + "/bench-origin.img", spath = dir + "/bench-store.img";
    if (on_file) {
      unlink(opath.c_str());
      unlink(spath.c_str());
      FileDeviceOptions fo;
      fo.create = true;
      fo.create_size = 1 << 30;
      s.origin = std::move(FileDevice::open(opath, fo)).value();
      fo.create_size = 2ull << 30;
      s.store = std::move(FileDevice::open(spath, fo)).value();
      CreateOptions o;
      o.origin_size = 1 << 30;
      die(format_store(*s.store, o), "format");
      s.engine = std::move(Engine::open(*s.origin, *s.store, EngineOptions{})).value();
    } else {
      s = make_engine(1 << 30, 2ull << 30, 65536, StoreFormat::kRange, "memory");
    }
    uint64_t have = 0;
    for (uint64_t n : counts) {
      auto t0 = Clock::now();
      for (; have < n; ++have) die(s.engine->create_snapshot(std::nullopt, "").status(), "snapshot");
      double fill_s = us_since(t0) / 1e6;
      std::vector<double> t;
      for (int i = 0; i < 200; ++i) {
        auto c0 = Clock::now();
        die(s.engine->create_snapshot(std::nullopt, "").status(), "snapshot");
        t.push_back(us_since(c0));
        ++have;
      }
      double us = median(t);
      printf("  %-6s %7llu existing: snapshot create %8.1f us (median of 200)%s\n", on_file ? "file" : "memory",
             (unsigned long long)n, us, fill_s > 1 ? fmt::format(" [{:.0f} s to create them]", fill_s).c_str() : "");
      out.push_back({{"device", on_file ? "file" : "memory"}, {"existing", n}, {"create_us", us}});
    }
    s.vol.reset();
    s.engine.reset();
    if (on_file) {
      unlink(opath.c_str());
      unlink(spath.c_str());
    }
  }
  return out;
}

// The two exception stores on the same workloads: origin first-write cost
// with 1, 16 and 64 live snapshots; snapshot delete (the command, and the
// background reclaim it starts); metadata bytes per exception.
nlohmann::json compare_stores(int writes) {
  nlohmann::json out = nlohmann::json::array();
  const uint32_t chunk = 64 * 1024;
  const uint64_t origin = uint64_t(writes) * 4 * chunk;
  printf("  %-8s %12s %12s %12s %14s %14s %12s\n", "store", "write@1 us", "write@16 us", "write@64 us",
         "delete us", "reclaim ms", "meta B/exc");
  for (StoreFormat f : {StoreFormat::kRange, StoreFormat::kBitmask}) {
    nlohmann::json row{{"store", store_format_name(f)}};
    // The same measurement as first_write_cost, for this store.
    for (const auto& r : first_write_cost({1, 16, 64}, writes, f, true))
      row["first_write_us_" + std::to_string(r["snapshots"].get<uint64_t>())] = r["first_write_us"];
    // 16 snapshots, every other one also written, so chunks have several
    // exceptions; then delete one and let the background reclaim run.
    std::vector<uint8_t> buf(4096, 0x5a);
    Setup s = make_engine(origin, origin * 3 + (256 << 20), chunk, f);
    for (uint64_t i = 0; i < 16; ++i) die(s.engine->create_snapshot(std::nullopt, "").status(), "snapshot");
    for (int i = 0; i < writes; ++i) die(sync_write(*s.engine, s.vol, uint64_t(i) * chunk, buf), "write");
    for (uint64_t id = 1; id <= 16; id += 2) {
      auto v = *s.engine->open_volume("snapshot/" + std::to_string(id));
      for (int i = 0; i < writes / 4; ++i) die(sync_write(*s.engine, v, uint64_t(i) * chunk, buf), "write");
    }
    auto st = s.engine->status().store;
    row["meta_bytes_per_exception"] = double(st.meta_blocks_used) * 4096 / double(st.exceptions);
    row["exceptions"] = st.exceptions;
    auto d0 = Clock::now();
    die(s.engine->delete_snapshot(2), "delete");
    row["delete_us"] = us_since(d0);
    auto r0 = Clock::now();
    while (s.engine->status().store.reclaim_active) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    row["reclaim_ms"] = us_since(r0) / 1000;
    printf("  %-8s %12.1f %12.1f %12.1f %14.1f %14.1f %12.1f\n", store_format_name(f),
           row["first_write_us_1"].get<double>(), row["first_write_us_16"].get<double>(),
           row["first_write_us_64"].get<double>(), row["delete_us"].get<double>(), row["reclaim_ms"].get<double>(),
           row["meta_bytes_per_exception"].get<double>());
    out.push_back(row);
  }
  return out;
}

// Grows a range store on a sparse file to `total` exceptions (one snapshot,
// one exception per chunk) and samples the RSS on the way.
nlohmann::json rss_growth(uint64_t total, const std::string& dir) {
  const size_t cache = 64ull << 20;
  std::string path = dir + "/bench-rss-store.img";
  unlink(path.c_str());
  const uint32_t chunk = 4096;
  uint64_t data_bytes = total * chunk + (1ull << 30);
  FileDeviceOptions fo;
  fo.create = true;
  fo.create_size = data_bytes + total * 128 + (256 << 20);
  auto dev = std::move(FileDevice::open(path, fo)).value();
  CreateOptions o;
  o.chunk_size = chunk;
  o.origin_size = total * chunk;
  die(format_store(*dev, o), "format");
  TmOptions tmo;
  tmo.cache_bytes = cache;
  auto store = std::move(open_store(*dev, tmo)).value();
  die(store->create_snapshot(std::nullopt, "", 0).status(), "snapshot");
  long base = rss_kib();
  nlohmann::json samples = nlohmann::json::array();
  auto t0 = Clock::now();
  uint64_t next_sample = total / 10;
  for (uint64_t c = 0; c < total; ++c) {
    store->reset_query(c);
    auto more = store->query_next_remap();
    die(more.status(), "query");
    CopyDescriptor d;
    die(store->add_next_remap(&d).status(), "add");
    if ((c + 1) % 100000 == 0) die(store->commit(), "commit");
    if (c + 1 == next_sample || c + 1 == total) {
      long rss = rss_kib();
      printf("  %9llu exceptions: RSS %6.1f MiB (%+.1f MiB since start, cache %zu MiB), %.0f s\n",
             (unsigned long long)(c + 1), rss / 1024.0, (rss - base) / 1024.0, cache >> 20, us_since(t0) / 1e6);
      fflush(stdout);
      samples.push_back({{"exceptions", c + 1}, {"rss_mib", rss / 1024.0}});
      next_sample += total / 10;
    }
  }
  die(store->commit(), "commit");
  auto stats = store->stats();
  double meta_mib = double(stats.meta_blocks_used) * 4096 / (1 << 20);
  printf("  metadata on disk: %.0f MiB for %llu exceptions (%.1f bytes each); peak RSS %.1f MiB\n", meta_mib,
         (unsigned long long)stats.exceptions, meta_mib * (1 << 20) / double(stats.exceptions), peak_rss_kib() / 1024.0);
  store.reset();
  dev.reset();
  unlink(path.c_str());
  return {{"samples", samples}, {"cache_mib", cache >> 20}, {"start_rss_mib", base / 1024.0},
          {"peak_rss_mib", peak_rss_kib() / 1024.0}, {"metadata_mib", meta_mib}};
}

// `snapshot list --space` at scale (the engine's space pass, which is what
// the command waits for; the rest is the plain list):
//  * `snaps` live snapshots (in memory), `writes` origin first writes after
//    the last one (each an exception read by all of them) and one snapshot
//    write to each of `writes` snapshots (an exception of its own);
//  * `total` exceptions in a range store on a sparse file, 64 MiB cache
//    (built as rss_growth does: one snapshot, one exception per chunk, then
//    a second snapshot and a write to it every 16th chunk), on a real file
//    through the engine: cold and warm.
nlohmann::json space_cost(uint64_t snaps, int writes, uint64_t total, const std::string& dir) {
  nlohmann::json out;
  {
    Setup s = make_engine(1 << 30, 2ull << 30, 65536, StoreFormat::kRange, "memory");
    for (uint64_t i = 0; i < snaps; ++i) die(s.engine->create_snapshot(std::nullopt, "").status(), "snapshot");
    std::vector<uint8_t> buf(4096, 0x5a);
    for (int i = 0; i < writes; ++i) die(sync_write(*s.engine, s.vol, uint64_t(i) * 65536, buf), "write");
    for (int i = 0; i < writes; ++i) {
      auto v = *s.engine->open_volume("snapshot/" + std::to_string(1 + uint64_t(i) * (snaps / writes)));
      die(sync_write(*s.engine, v, uint64_t(writes + i) * 65536, buf), "write");
    }
    uint64_t ex = s.engine->status().store.exceptions;
    std::vector<double> t, tl;
    for (int r = 0; r < 5; ++r) {
      auto t0 = Clock::now();
      auto u = s.engine->space_use();
      die(u.status(), "space");
      t.push_back(us_since(t0) / 1000);
      t0 = Clock::now();
      for (SnapshotId from = 0;;) {
        auto page = *s.engine->list_snapshots(from, 1024);
        if (page.size() < 1024) break;
        from = page.back().id + 1;
      }
      tl.push_back(us_since(t0) / 1000);
    }
    printf("  %llu snapshots, %llu exceptions: space pass %.1f ms, the plain list %.1f ms (median of 5)\n",
           (unsigned long long)snaps, (unsigned long long)ex, median(t), median(tl));
    out["snapshots"] = {{"snapshots", snaps}, {"exceptions", ex}, {"space_ms", median(t)}, {"list_ms", median(tl)}};
  }
  std::string spath = dir + "/bench-space-store.img", opath = dir + "/bench-space-origin.img";
  unlink(spath.c_str());
  unlink(opath.c_str());
  const uint32_t chunk = 4096;
  FileDeviceOptions fo;
  fo.create = true;
  fo.create_size = (total + total / 8) * chunk + (1ull << 30) + total * 128 + (256 << 20);
  auto t0 = Clock::now();
  {
    auto dev = std::move(FileDevice::open(spath, fo)).value();
    CreateOptions o;
    o.chunk_size = chunk;
    o.origin_size = total * chunk;
    die(format_store(*dev, o), "format");
    TmOptions tmo;
    tmo.cache_bytes = 64ull << 20;
    auto store = std::move(open_store(*dev, tmo)).value();
    die(store->create_snapshot(std::nullopt, "", 0).status(), "snapshot");
    auto add = [&](uint64_t c) {
      store->reset_query(c);
      die(store->query_next_remap().status(), "query");
      CopyDescriptor d;
      die(store->add_next_remap(&d).status(), "add");
    };
    uint64_t first = total - total / 16;
    for (uint64_t c = 0; c < first; ++c) {
      add(c);
      if ((c + 1) % 100000 == 0) die(store->commit(), "commit");
    }
    auto two = store->create_snapshot(std::nullopt, "", 0);
    die(two.status(), "snapshot");
    for (uint64_t c = first; c < total; ++c) add(c);  // shared by both
    for (uint64_t c = 0; c < first; c += 16) die(store->make_chunk_writeable(c, *two).status(), "write");
    die(store->commit(), "commit");
    auto st = store->stats();
    printf("  built: %llu exceptions, generation %llu\n", (unsigned long long)st.exceptions,
           (unsigned long long)st.generation);
  }
  double build_s = us_since(t0) / 1e6;
  fo.create_size = total * chunk;
  auto origin = std::move(FileDevice::open(opath, fo)).value();
  auto store_dev = std::move(FileDevice::open(spath)).value();
  EngineOptions eo;
  auto engine = std::move(Engine::open(*origin, *store_dev, eo, make_sync_io_context())).value();
  uint64_t ex = engine->status().store.exceptions;
  printf("  opened: %llu exceptions, generation %llu\n", (unsigned long long)ex,
         (unsigned long long)engine->status().store.generation);
  long rss0 = rss_kib();
  nlohmann::json runs = nlohmann::json::array();
  for (const char* kind : {"cold", "warm"}) {
    auto t1 = Clock::now();
    auto u = engine->space_use();
    die(u.status(), "space");
    double sec = us_since(t1) / 1e6;
    printf("  %llu exceptions, 2 snapshots (%s cache): space pass %.2f s; RSS %+.1f MiB over the open engine;"
           " exclusive %llu + %llu chunks, shared %llu\n",
           (unsigned long long)ex, kind, sec, (rss_kib() - rss0) / 1024.0,
           (unsigned long long)u->snapshots[0].exclusive_chunks, (unsigned long long)u->snapshots[1].exclusive_chunks,
           (unsigned long long)u->snapshots[0].shared_chunks);
    runs.push_back({{"cache", kind}, {"seconds", sec}});
  }
  printf("  (building that store took %.0f s)\n", build_s);
  out["exceptions"] = {{"exceptions", ex}, {"runs", runs}, {"rss_growth_mib", (rss_kib() - rss0) / 1024.0}};
  engine.reset();
  unlink(spath.c_str());
  unlink(opath.c_str());
  return out;
}

}  // namespace
}  // namespace multisnap

int main(int argc, char** argv) {
  using namespace multisnap;
  CLI::App app{"multisnap core benchmark (issue #2 figures)"};
  std::vector<uint64_t> snaps = {1, 10000, 100000};
  int writes = 2000;
  uint64_t exceptions = 10000000;
  std::string dir = ".", json_path;
  bool skip_rss = false;
  app.add_option("--snapshots", snaps, "live snapshot counts")->delimiter(',');
  app.add_option("--writes", writes, "first writes per measurement");
  app.add_option("--exceptions", exceptions, "exceptions for the RSS run");
  app.add_option("--dir", dir, "directory for the sparse files of the create and RSS runs");
  app.add_option("--io-dir", g_io_dir, "directory for the first-write runs' sparse files, or 'memory'");
  app.add_flag("--skip-rss", skip_rss, "skip the 10M exception RSS run");
  bool rss_only = false, space_only = false;
  uint64_t space_exceptions = 10000000;
  app.add_flag("--space-only", space_only, "only the `snapshot list --space` figures");
  app.add_option("--space-exceptions", space_exceptions, "exceptions for the space pass run");
  app.add_flag("--rss-only", rss_only, "only the RSS run (what the full run starts in a fresh process)");
  app.add_option("--json", json_path, "write the results as JSON here");
  CLI11_PARSE(app, argc, argv);
  nlohmann::json out;
  if (space_only) {
    uint64_t n = snaps.empty() ? 100000 : snaps.back();
    printf("snapshot list --space: the engine's pass (range store):\n");
    out["space"] = space_cost(n, 1000, space_exceptions, dir);
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
    return 0;
  }
  if (rss_only) {
    out = rss_growth(exceptions, dir);
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
    return 0;
  }
  printf("origin first-write cost (4 KiB writes, 64 KiB chunks, devices in %s):\n", g_io_dir.c_str());
  out["first_write"] = first_write_cost(snaps, writes);
  printf("range store vs bitmask store (64 KiB chunks, devices in %s, %d first writes each; 16 snapshots,\n"
         "  every other one also written, for delete and metadata):\n", g_io_dir.c_str(), writes);
  out["stores"] = compare_stores(writes);
  printf("snapshot create (in-process, median):\n");
  std::vector<uint64_t> counts = {0};
  for (uint64_t n : snaps)
    if (n >= 1000) counts.push_back(n);
  out["create"] = create_cost(counts, dir);
  if (!skip_rss) {
    // In a fresh process, so nothing the other runs allocated is counted.
    printf("memory while the store grows (range store, 4 KiB chunks, 64 MiB cache, sparse file in %s):\n", dir.c_str());
    fflush(stdout);
    std::string tmp = dir + "/bench-rss.json";
    std::string exe = "/proc/self/exe";
    std::string n = std::to_string(exceptions);
    pid_t pid = fork();
    if (pid == 0) {
      execl(exe.c_str(), "core_bench", "--rss-only", "--exceptions", n.c_str(), "--dir", dir.c_str(), "--json",
            tmp.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    std::ifstream in(tmp);
    if (in) out["rss"] = nlohmann::json::parse(in, nullptr, false);
    unlink(tmp.c_str());
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
