// MemoryBackend: a Backend whose exports live in RAM, for tests, benchmarks
// and the fuzzer.
//
// Each export is a zero-filled anonymous mapping plus one allocation bit per
// granule (4 KiB, or min_block if larger), so base:allocation is truthful:
// a granule is a hole until written. TRIM punches the granules it covers
// entirely and leaves partly covered ones alone. WRITE_ZEROES zeroes its
// range, punches the granules it covers entirely unless NO_HOLE is set, and
// leaves the others allocated. Holes read as zeroes and are reported
// HOLE|ZERO; allocated granules are reported as data (flags 0).
//
// Completion: by default every request completes inside the call that
// submits it. With completion_threads > 0, requests are queued and run by
// that many threads, each taking a random queued request and sleeping a
// random 0..max_delay_us first, so completions arrive out of order and on
// other threads.
//
// Meta contexts: besides base:allocation, every export offers the fake
// context "memory:stripes:<N>" (N from 1 to 2^30): flag 1 on the odd N-byte
// stripes (offset / N odd), 0 on the even ones. LIST answers "memory:",
// "memory:stripes:" and no query with the family "memory:stripes:".
//
// Faults: inject_error() makes requests touching a range fail with a chosen
// code, to test how errors reach clients.
//
// Thread-safe: every method, including those of the Export objects. Export
// objects share their data (and the completion threads) with the backend:
// they stay usable after remove_export() and may even outlive the backend.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "nbd/backend.h"

namespace multisnap::nbd {

struct MemoryExportOptions {
  std::string name;
  std::string description;
  uint64_t size = 0;
  bool read_only = false;
  uint32_t min_block = 1;
  uint32_t preferred_block = 4096;
  uint32_t max_block = 32u << 20;
  bool can_multi_conn = false;
  bool can_trim = true;
  bool can_write_zeroes = true;
  bool can_fast_zero = true;
  bool can_cache = true;
};

struct MemoryBackendOptions {
  uint32_t completion_threads = 0;  // 0: complete inside each call
  uint32_t max_delay_us = 0;        // random delay before each queued request
  uint64_t seed = 1;
};

// Per-export activity, for tests.
struct MemoryExportStats {
  int open_exports = 0;  // Export objects alive now
  uint64_t opens = 0;    // Export objects ever created
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t fua_writes = 0;  // writes, trims and write-zeroes with FUA
  uint64_t flushes = 0;
  uint64_t trims = 0;
  uint64_t zeroes = 0;
  uint64_t caches = 0;
  uint64_t block_status = 0;
};

class MemoryBackend final : public Backend {
 public:
  explicit MemoryBackend(MemoryBackendOptions options = {});
  ~MemoryBackend() override;

  // kExists for a taken name, kInvalidArgument for a bad size or block size,
  // kNoSpace when the memory cannot be mapped.
  Status add_export(const MemoryExportOptions& options);
  // Later opens fail with kNotFound; open Export objects keep working.
  Status remove_export(std::string_view name);
  // The export "" stands for; by default the first one added.
  void set_default_export(std::string name);

  // Direct access for tests, bypassing NBD (and injected errors).
  Status read(std::string_view name, uint64_t offset, void* buf, size_t len) const;
  Status write(std::string_view name, uint64_t offset, const void* buf, size_t len);
  // Requests of `name` touching [offset, offset + length) fail with `code`;
  // FLUSH fails when length is 0. Replaces the previous injected error.
  void inject_error(std::string_view name, uint64_t offset, uint64_t length, Code code);
  void clear_error(std::string_view name);
  MemoryExportStats stats(std::string_view name) const;

  // Backend
  Result<std::vector<ExportInfo>> list_exports() override;
  Result<ExportInfo> export_info(std::string_view name) override;
  Result<std::unique_ptr<Export>> open_export(std::string_view name) override;
  Result<std::vector<std::string>> meta_contexts(std::string_view name, std::string_view query,
                                                 MetaQuery kind) override;

  class Volume;
  class Completer;

 private:
  std::shared_ptr<Volume> find(std::string_view name) const;

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Volume>, std::less<>> volumes_;
  std::string default_export_;
  std::shared_ptr<Completer> completer_;
};

}  // namespace multisnap::nbd
