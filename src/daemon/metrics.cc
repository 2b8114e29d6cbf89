#include "daemon/metrics.h"

#include <fmt/format.h>

namespace multisnap {

const char* RequestMetrics::kind_name(int k) { return k == kOrigin ? "origin" : "snapshot"; }

const char* RequestMetrics::op_name(int o) {
  static constexpr const char* kNames[kOps] = {"read", "write", "flush", "trim", "write_zeroes", "cache"};
  return kNames[o];
}

nbd::Done RequestMetrics::wrap(Kind kind, Op op, uint64_t bytes, nbd::Done done) {
  return [c = &ops_[kind][op], bytes, start = std::chrono::steady_clock::now(), done = std::move(done)](Status s) {
    c->latency.record_since(start);
    c->requests.fetch_add(1, std::memory_order_relaxed);
    if (s.is_ok()) c->bytes.fetch_add(bytes, std::memory_order_relaxed);
    else c->errors.fetch_add(1, std::memory_order_relaxed);
    done(std::move(s));
  };
}

namespace {

class Text {
 public:
  void family(const char* name, const char* type, const char* help) {
    out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void sample(std::string_view name, std::string_view labels, double value) {
    if (labels.empty()) out_ += fmt::format("{} {}\n", name, value);
    else out_ += fmt::format("{}{{{}}} {}\n", name, labels, value);
  }
  void sample(std::string_view name, std::string_view labels, uint64_t value) {
    if (labels.empty()) out_ += fmt::format("{} {}\n", name, value);
    else out_ += fmt::format("{}{{{}}} {}\n", name, labels, value);
  }
  void one(const char* name, const char* type, const char* help, uint64_t value) {
    family(name, type, help);
    sample(name, "", value);
  }
  void one(const char* name, const char* type, const char* help, double value) {
    family(name, type, help);
    sample(name, "", value);
  }
  // One histogram's samples (the family line is the caller's).
  void histogram(std::string_view name, std::string_view labels, const HistogramSnapshot& h) {
    std::string sep = labels.empty() ? "" : ",";
    uint64_t cumulative = 0;
    for (int i = 0; i < HistogramSnapshot::kBuckets; ++i) {
      cumulative += h.buckets[i];
      out_ += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, HistogramSnapshot::upper_seconds(i),
                          cumulative);
    }
    // The count is read apart from the buckets: never below their sum.
    uint64_t count = std::max(h.count, cumulative);
    out_ += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, count);
    sample(fmt::format("{}_sum", name), labels, static_cast<double>(h.sum_ns) * 1e-9);
    sample(fmt::format("{}_count", name), labels, count);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

std::string labels(int kind, int op) {
  return fmt::format("export=\"{}\",op=\"{}\"", RequestMetrics::kind_name(kind), RequestMetrics::op_name(op));
}

}  // namespace

std::string render_metrics(const EngineStatus& e, const nbd::ServerStats& n, const RequestMetrics& r) {
  using R = RequestMetrics;
  Text t;
  const StoreStats& s = e.store;
  const EngineCounters& c = e.counters;
  const uint64_t chunk = s.chunk_size;

  t.family("multisnap_info", "gauge", "Always 1; the labels say which program and store format.");
  t.sample("multisnap_info", fmt::format("version=\"{}\",format=\"{}\"", MULTISNAP_VERSION, s.format), uint64_t{1});

  t.family("multisnap_requests_total", "counter", "NBD requests completed, by export kind and operation.");
  for (int k = 0; k < R::kKinds; ++k)
    for (int o = 0; o < R::kOps; ++o) t.sample("multisnap_requests_total", labels(k, o), r.at(k, o).requests.load());
  t.family("multisnap_request_errors_total", "counter", "NBD requests that completed with an error.");
  for (int k = 0; k < R::kKinds; ++k)
    for (int o = 0; o < R::kOps; ++o)
      t.sample("multisnap_request_errors_total", labels(k, o), r.at(k, o).errors.load());
  t.family("multisnap_request_bytes_total", "counter", "Bytes read or written by successful NBD requests.");
  for (int k = 0; k < R::kKinds; ++k)
    for (int o : {R::kRead, R::kWrite})
      t.sample("multisnap_request_bytes_total", labels(k, o), r.at(k, o).bytes.load());
  t.family("multisnap_request_duration_seconds", "histogram",
           "Time from an NBD request reaching the volume to its completion.");
  for (int k = 0; k < R::kKinds; ++k)
    for (int o = 0; o < R::kOps; ++o)
      t.histogram("multisnap_request_duration_seconds", labels(k, o), r.at(k, o).latency.snapshot());

  t.family("multisnap_copy_duration_seconds", "histogram",
           "Copy-on-write jobs: from start to the old data written to the store.");
  t.histogram("multisnap_copy_duration_seconds", "", c.copy_latency);
  t.family("multisnap_commit_duration_seconds", "histogram", "Metadata commits of the store (two fdatasyncs each).");
  t.histogram("multisnap_commit_duration_seconds", "", c.commit_latency);
  t.one("multisnap_copy_jobs_total", "counter", "Copy-on-write jobs started.", c.copy_jobs);
  t.one("multisnap_chunks_copied_total", "counter", "Chunks given a store copy by copy-on-write.", c.chunks_copied);
  t.one("multisnap_copy_runs_total", "counter",
        "Copy runs: origin copies of adjacent chunks done together (one origin read, or none when mapped).",
        c.copy_runs);
  t.one("multisnap_copy_runs_mapped_total", "counter",
        "Copy runs written to the store straight from the origin's page cache (no origin read).",
        c.copy_runs_mapped);
  t.one("multisnap_commits_total", "counter", "Metadata commits.", c.commits);
  t.one("multisnap_engine_retries_total", "counter",
        "Requests the engine set aside and processed again (waiting for a copy, a slot, a commit or space).",
        c.retries);
  t.one("multisnap_origin_writes_inline_total", "counter",
        "Origin writes the engine thread made itself instead of through io_uring (small, without FUA).",
        c.origin_writes_inline);
  t.one("multisnap_direct_writes_total", "counter", "Origin writes that needed no copy and bypassed the engine.",
        c.direct_writes);
  t.one("multisnap_direct_reads_total", "counter",
        "Snapshot reads of chunks known to be in the store, served without the engine thread.", c.direct_reads);
  t.one("multisnap_requests_in_flight", "gauge", "Requests inside the engine now.", e.requests_in_flight);

  t.one("multisnap_origin_size_bytes", "gauge", "Size of the origin volume.", s.origin_size);
  t.one("multisnap_store_size_bytes", "gauge", "Bytes of the store device the store uses (multisnap grow raises it).",
        s.store_bytes);
  t.one("multisnap_store_max_size_bytes", "gauge", "The most multisnap grow can take the store to.",
        s.max_store_bytes);
  t.one("multisnap_store_data_total_bytes", "gauge", "Data area of the store.", s.data_chunks_total * chunk);
  t.one("multisnap_store_data_used_bytes", "gauge", "Data area in use.", s.data_chunks_used * chunk);
  t.one("multisnap_store_metadata_total_bytes", "gauge", "Metadata area of the store.", s.meta_blocks_total * 4096);
  t.one("multisnap_store_metadata_used_bytes", "gauge", "Metadata area in use.", s.meta_blocks_used * 4096);
  t.one("multisnap_store_generation", "gauge", "Number of the last commit.", s.generation);
  t.one("multisnap_store_failed", "gauge", "1 when the store stopped taking changes (restart to recover).",
        uint64_t{e.failure.empty() ? 0u : 1u});
  t.one("multisnap_snapshots", "gauge", "Live snapshots.", s.snapshots);
  t.one("multisnap_exceptions", "gauge", "Exception entries in the store's metadata.", s.exceptions);
  if (s.snapshot_slots_free != UINT64_MAX)
    t.one("multisnap_snapshot_slots_free", "gauge", "Bitmask store: snapshots that can still be created.",
          s.snapshot_slots_free);

  t.one("multisnap_reclaim_active", "gauge", "1 while deleted snapshots' space is being reclaimed.",
        uint64_t{s.reclaim_active ? 1u : 0u});
  t.one("multisnap_reclaim_progress_ratio", "gauge", "Fraction of the current reclaim pass done.",
        s.reclaim_progress);
  t.one("multisnap_rollback_active", "gauge", "1 while a rollback runs.", uint64_t{e.rollback.active ? 1u : 0u});
  t.one("multisnap_rollback_done_chunks", "gauge", "Chunks the running rollback has visited.",
        e.rollback.done_chunks);
  t.one("multisnap_rollback_total_chunks", "gauge", "Chunks the running rollback visits in all.",
        e.rollback.total_chunks);

  t.one("multisnap_cache_hits_total", "counter", "Metadata block cache hits.", e.cache_hits);
  t.one("multisnap_cache_misses_total", "counter", "Metadata block cache misses.", e.cache_misses);
  t.one("multisnap_cache_capacity_bytes", "gauge", "Metadata cache bound.", e.cache_capacity_blocks * 4096);
  t.one("multisnap_cache_used_bytes", "gauge", "Metadata cache in use.", e.cache_blocks * 4096);

  t.one("multisnap_open_volumes", "gauge", "Exports open now.", e.open_volumes);
  t.one("multisnap_nbd_connections", "gauge", "NBD connections now.", n.connections_now);
  t.one("multisnap_nbd_connections_negotiating", "gauge", "NBD connections still in the handshake.",
        n.connections_negotiating);
  t.one("multisnap_nbd_connections_total", "counter", "NBD connections accepted.", n.connections_total);
  t.one("multisnap_nbd_connections_refused_total", "counter", "NBD connections refused over the limit.",
        n.connections_refused);
  t.one("multisnap_nbd_handshake_timeouts_total", "counter", "NBD connections dropped for a slow handshake.",
        n.handshake_timeouts);
  t.one("multisnap_nbd_protocol_violations_total", "counter", "NBD connections dropped for breaking the protocol.",
        n.protocol_violations);
  return t.take();
}

}  // namespace multisnap
