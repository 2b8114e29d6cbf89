#include "support/memory_backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <random>
#include <shared_mutex>
#include <thread>

#include "util/units.h"

namespace multisnap::nbd {

// ---- Volume: the bytes and allocation map of one export

class MemoryBackend::Volume {
 public:
  static Result<std::shared_ptr<Volume>> create(const MemoryExportOptions& options);
  ~Volume() { munmap(data_, std::max<uint64_t>(info_.size, 1)); }

  const ExportInfo& info() const { return info_; }
  Status read(uint64_t offset, uint64_t len, uint8_t* buf, bool faults = true) const;
  Status write(uint64_t offset, uint64_t len, const uint8_t* buf, bool faults = true);
  Status zero(uint64_t offset, uint64_t len, bool punch);
  Status trim(uint64_t offset, uint64_t len);
  Status flush() const;
  Status touch(uint64_t offset, uint64_t len) const;  // CACHE
  Result<std::vector<Extent>> extents(uint64_t offset, uint64_t len) const;

  void set_fault(uint64_t offset, uint64_t length, Code code);
  MemoryExportStats stats() const;

  std::atomic<int> open_exports{0};
  std::atomic<uint64_t> opens{0};
  struct Counters {
    std::atomic<uint64_t> reads{0}, writes{0}, fua_writes{0}, flushes{0}, trims{0}, zeroes{0},
        caches{0}, block_status{0};
  } counters;

 private:
  Volume(ExportInfo info, uint8_t* data, uint64_t granule);
  Status check(uint64_t offset, uint64_t len, bool faults) const;  // needs mu_
  void set_allocated(uint64_t offset, uint64_t len, bool allocated, bool whole_granules_only);

  const ExportInfo info_;
  uint8_t* const data_;
  const uint64_t granule_;
  mutable std::shared_mutex mu_;
  std::vector<uint8_t> allocated_;  // one per granule; guarded by mu_
  bool has_fault_ = false;          // guarded by mu_
  uint64_t fault_offset_ = 0;
  uint64_t fault_length_ = 0;
  Code fault_code_ = Code::kOk;
};

Result<std::shared_ptr<MemoryBackend::Volume>> MemoryBackend::Volume::create(
    const MemoryExportOptions& o) {
  if (!is_power_of_two(o.min_block) || o.min_block > 65536 || o.size % o.min_block != 0) {
    return make_error(Code::kInvalidArgument, "export '{}': bad min_block {} for size {}", o.name,
                      o.min_block, o.size);
  }
  void* p = mmap(nullptr, std::max<uint64_t>(o.size, 1), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return make_error(Code::kNoSpace, "cannot map {} bytes", o.size);
  ExportInfo info;
  info.name = o.name;
  info.description = o.description;
  info.size = o.size;
  info.read_only = o.read_only;
  info.can_multi_conn = o.can_multi_conn;
  info.can_trim = o.can_trim;
  info.can_write_zeroes = o.can_write_zeroes;
  info.can_fast_zero = o.can_fast_zero;
  info.can_cache = o.can_cache;
  info.min_block = o.min_block;
  info.preferred_block = o.preferred_block;
  info.max_block = o.max_block;
  uint64_t granule = std::max<uint64_t>(4096, o.min_block);
  return std::shared_ptr<Volume>(new Volume(std::move(info), static_cast<uint8_t*>(p), granule));
}

MemoryBackend::Volume::Volume(ExportInfo info, uint8_t* data, uint64_t granule)
    : info_(std::move(info)),
      data_(data),
      granule_(granule),
      allocated_(div_round_up(info_.size, granule), 0) {}

Status MemoryBackend::Volume::check(uint64_t offset, uint64_t len, bool faults) const {
  if (offset > info_.size || len > info_.size - offset) {
    return make_error(Code::kOutOfRange, "{}+{} is past the end of '{}'", offset, len, info_.name);
  }
  if (faults && has_fault_ && fault_length_ > 0 && offset < fault_offset_ + fault_length_ &&
      fault_offset_ < offset + len) {
    return make_error(fault_code_, "injected error at {}", fault_offset_);
  }
  return Status::ok();
}

Status MemoryBackend::Volume::read(uint64_t offset, uint64_t len, uint8_t* buf, bool faults) const {
  std::shared_lock lock(mu_);
  MS_TRY(check(offset, len, faults));
  std::memcpy(buf, data_ + offset, len);
  return Status::ok();
}

Status MemoryBackend::Volume::write(uint64_t offset, uint64_t len, const uint8_t* buf,
                                    bool faults) {
  std::unique_lock lock(mu_);
  MS_TRY(check(offset, len, faults));
  std::memcpy(data_ + offset, buf, len);
  set_allocated(offset, len, true, false);
  return Status::ok();
}

Status MemoryBackend::Volume::zero(uint64_t offset, uint64_t len, bool punch) {
  std::unique_lock lock(mu_);
  MS_TRY(check(offset, len, true));
  std::memset(data_ + offset, 0, len);
  set_allocated(offset, len, true, false);
  if (punch) set_allocated(offset, len, false, true);
  return Status::ok();
}

Status MemoryBackend::Volume::trim(uint64_t offset, uint64_t len) {
  std::unique_lock lock(mu_);
  MS_TRY(check(offset, len, true));
  // Only whole granules are discarded (and then read as zeroes).
  uint64_t first = div_round_up(offset, granule_);
  uint64_t end = std::min(offset + len, info_.size);
  uint64_t last = end == info_.size ? div_round_up(end, granule_) : end / granule_;
  for (uint64_t g = first; g < last; ++g) {
    uint64_t start = g * granule_;
    std::memset(data_ + start, 0, std::min(granule_, info_.size - start));
  }
  set_allocated(offset, len, false, true);
  return Status::ok();
}

Status MemoryBackend::Volume::flush() const {
  std::shared_lock lock(mu_);
  if (has_fault_ && fault_length_ == 0) return make_error(fault_code_, "injected flush error");
  return Status::ok();
}

Status MemoryBackend::Volume::touch(uint64_t offset, uint64_t len) const {
  std::shared_lock lock(mu_);
  return check(offset, len, true);
}

void MemoryBackend::Volume::set_allocated(uint64_t offset, uint64_t len, bool allocated,
                                          bool whole_granules_only) {
  if (len == 0) return;
  uint64_t end = offset + len;
  uint64_t first = whole_granules_only ? div_round_up(offset, granule_) : offset / granule_;
  uint64_t last = div_round_up(end, granule_);
  // The export's last granule may be short: covering up to the end covers it.
  if (whole_granules_only && end != info_.size) last = end / granule_;
  for (uint64_t g = first; g < last; ++g) allocated_[g] = allocated ? 1 : 0;
}

Result<std::vector<Extent>> MemoryBackend::Volume::extents(uint64_t offset, uint64_t len) const {
  constexpr size_t kMaxExtents = 512;
  constexpr uint64_t kMaxExtentLength = 1u << 30;
  std::shared_lock lock(mu_);
  MS_TRY(check(offset, len, true));
  std::vector<Extent> out;
  uint64_t pos = offset;
  uint64_t end = offset + len;
  while (pos < end && out.size() < kMaxExtents) {
    uint64_t g = pos / granule_;
    bool hole = allocated_[g] == 0;
    uint64_t run_end = std::min((g + 1) * granule_, info_.size);
    while (run_end < end && run_end < info_.size && (allocated_[run_end / granule_] == 0) == hole &&
           run_end - pos < kMaxExtentLength) {
      run_end = std::min(run_end + granule_, info_.size);
    }
    out.push_back({static_cast<uint32_t>(run_end - pos), hole, hole});
    pos = run_end;
  }
  return out;
}

void MemoryBackend::Volume::set_fault(uint64_t offset, uint64_t length, Code code) {
  std::unique_lock lock(mu_);
  has_fault_ = code != Code::kOk;
  fault_offset_ = offset;
  fault_length_ = length;
  fault_code_ = code;
}

MemoryExportStats MemoryBackend::Volume::stats() const {
  MemoryExportStats s;
  s.open_exports = open_exports.load();
  s.opens = opens.load();
  s.reads = counters.reads.load();
  s.writes = counters.writes.load();
  s.fua_writes = counters.fua_writes.load();
  s.flushes = counters.flushes.load();
  s.trims = counters.trims.load();
  s.zeroes = counters.zeroes.load();
  s.caches = counters.caches.load();
  s.block_status = counters.block_status.load();
  return s;
}

// ---- Completer: runs requests inline, or on threads in random order

class MemoryBackend::Completer {
 public:
  explicit Completer(const MemoryBackendOptions& options);
  ~Completer();

  template <typename Job>
  void submit(Job&& job) {
    if (threads_.empty()) return job();
    {
      std::lock_guard lock(mu_);
      queue_.emplace_back(std::forward<Job>(job));
    }
    cv_.notify_one();
  }

 private:
  void worker(uint64_t seed);

  const uint32_t max_delay_us_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                     // guarded by mu_
  std::vector<std::thread> threads_;
};

MemoryBackend::Completer::Completer(const MemoryBackendOptions& options)
    : max_delay_us_(options.max_delay_us) {
  for (uint32_t i = 0; i < options.completion_threads; ++i) {
    threads_.emplace_back([this, seed = options.seed + i] { worker(seed); });
  }
}

MemoryBackend::Completer::~Completer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void MemoryBackend::Completer::worker(uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything ran
      size_t pick = rng() % queue_.size();
      std::swap(queue_[pick], queue_.back());
      job = std::move(queue_.back());
      queue_.pop_back();
    }
    if (max_delay_us_ > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (max_delay_us_ + 1)));
    }
    job();
  }
}

// ---- MemoryExport

namespace {

constexpr std::string_view kStripesPrefix = "memory:stripes:";
constexpr uint64_t kMaxStripe = 1u << 30;

// The stripe size of "memory:stripes:<N>", or 0 when `name` is not one.
uint64_t parse_stripes(std::string_view name) {
  if (!name.starts_with(kStripesPrefix)) return 0;
  std::string_view digits = name.substr(kStripesPrefix.size());
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (ec != std::errc() || end != digits.data() + digits.size() || n == 0 || n > kMaxStripe) {
    return 0;
  }
  return n;
}

// "memory:stripes:<N>": flag 1 on the odd N-byte stripes of the export, 0
// on the even ones; one extent per stripe. Injected errors apply.
class StripesContext final : public MetaContext {
 public:
  using Volume = MemoryBackend::Volume;
  using Completer = MemoryBackend::Completer;

  StripesContext(std::shared_ptr<Volume> volume, std::shared_ptr<Completer> completer,
                 uint64_t stripe)
      : v_(std::move(volume)), completer_(std::move(completer)), stripe_(stripe) {}

  void block_status(uint64_t offset, uint64_t length, ContextExtentsDone done) override {
    completer_->submit([v = v_.get(), stripe = stripe_, offset, length, done = std::move(done)] {
      Status faults = v->touch(offset, length);
      if (!faults.is_ok()) return done(faults);
      std::vector<ContextExtent> out;
      uint64_t end = std::min(offset + length, v->info().size);
      for (uint64_t pos = offset; pos < end;) {
        uint64_t next = std::min((pos / stripe + 1) * stripe, end);
        out.push_back({static_cast<uint32_t>(next - pos), static_cast<uint32_t>((pos / stripe) & 1)});
        pos = next;
      }
      done(std::move(out));
    });
  }

 private:
  std::shared_ptr<Volume> v_;
  std::shared_ptr<Completer> completer_;
  const uint64_t stripe_;
};

class MemoryExport final : public Export {
 public:
  using Volume = MemoryBackend::Volume;
  using Completer = MemoryBackend::Completer;

  MemoryExport(std::shared_ptr<Volume> volume, std::shared_ptr<Completer> completer)
      : v_(std::move(volume)), completer_(std::move(completer)) {
    v_->open_exports.fetch_add(1);
    v_->opens.fetch_add(1);
  }
  ~MemoryExport() override { v_->open_exports.fetch_sub(1); }

  const ExportInfo& info() const override { return v_->info(); }

  void read(uint64_t offset, uint32_t length, uint8_t* buf, Done done) override {
    v_->counters.reads.fetch_add(1, std::memory_order_relaxed);
    completer_->submit([v = v_.get(), offset, length, buf, done = std::move(done)] {
      done(v->read(offset, length, buf));
    });
  }
  void write(uint64_t offset, uint32_t length, const uint8_t* buf, bool fua, Done done) override {
    count_write(v_->counters.writes, fua);
    completer_->submit([v = v_.get(), offset, length, buf, done = std::move(done)] {
      done(v->write(offset, length, buf));
    });
  }
  void flush(Done done) override {
    v_->counters.flushes.fetch_add(1, std::memory_order_relaxed);
    completer_->submit([v = v_.get(), done = std::move(done)] { done(v->flush()); });
  }
  void trim(uint64_t offset, uint64_t length, bool fua, Done done) override {
    count_write(v_->counters.trims, fua);
    completer_->submit(
        [v = v_.get(), offset, length, done = std::move(done)] { done(v->trim(offset, length)); });
  }
  void write_zeroes(uint64_t offset, uint64_t length, bool fua, bool no_hole, bool /*fast_zero*/,
                    Done done) override {
    // Zeroing memory is always fast, so FAST_ZERO never fails here.
    count_write(v_->counters.zeroes, fua);
    completer_->submit([v = v_.get(), offset, length, no_hole, done = std::move(done)] {
      done(v->zero(offset, length, !no_hole));
    });
  }
  void cache(uint64_t offset, uint64_t length, Done done) override {
    v_->counters.caches.fetch_add(1, std::memory_order_relaxed);
    completer_->submit(
        [v = v_.get(), offset, length, done = std::move(done)] { done(v->touch(offset, length)); });
  }
  void block_status(uint64_t offset, uint64_t length, ExtentsDone done) override {
    v_->counters.block_status.fetch_add(1, std::memory_order_relaxed);
    completer_->submit([v = v_.get(), offset, length, done = std::move(done)] {
      done(v->extents(offset, length));
    });
  }
  Result<std::unique_ptr<MetaContext>> open_meta_context(std::string_view name) override {
    uint64_t stripe = parse_stripes(name);
    if (stripe == 0) return make_error(Code::kNotFound, "no meta context '{}'", name);
    return std::unique_ptr<MetaContext>(new StripesContext(v_, completer_, stripe));
  }

 private:
  void count_write(std::atomic<uint64_t>& counter, bool fua) {
    counter.fetch_add(1, std::memory_order_relaxed);
    if (fua) v_->counters.fua_writes.fetch_add(1, std::memory_order_relaxed);
  }

  std::shared_ptr<Volume> v_;
  std::shared_ptr<Completer> completer_;
};

}  // namespace

// ---- MemoryBackend

MemoryBackend::MemoryBackend(MemoryBackendOptions options)
    : completer_(std::make_shared<Completer>(options)) {}

MemoryBackend::~MemoryBackend() = default;

Status MemoryBackend::add_export(const MemoryExportOptions& options) {
  MS_ASSIGN_OR_RETURN(std::shared_ptr<Volume> volume, Volume::create(options));
  std::lock_guard lock(mu_);
  if (volumes_.count(options.name) != 0) {
    return make_error(Code::kExists, "export '{}' exists", options.name);
  }
  volumes_.emplace(options.name, std::move(volume));
  if (default_export_.empty()) default_export_ = options.name;
  return Status::ok();
}

Status MemoryBackend::remove_export(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return make_error(Code::kNotFound, "no export '{}'", name);
  volumes_.erase(it);
  return Status::ok();
}

void MemoryBackend::set_default_export(std::string name) {
  std::lock_guard lock(mu_);
  default_export_ = std::move(name);
}

std::shared_ptr<MemoryBackend::Volume> MemoryBackend::find(std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name.empty() ? std::string_view(default_export_) : name);
  return it == volumes_.end() ? nullptr : it->second;
}

Status MemoryBackend::read(std::string_view name, uint64_t offset, void* buf, size_t len) const {
  auto v = find(name);
  if (!v) return make_error(Code::kNotFound, "no export '{}'", name);
  return v->read(offset, len, static_cast<uint8_t*>(buf), false);
}

Status MemoryBackend::write(std::string_view name, uint64_t offset, const void* buf, size_t len) {
  auto v = find(name);
  if (!v) return make_error(Code::kNotFound, "no export '{}'", name);
  return v->write(offset, len, static_cast<const uint8_t*>(buf), false);
}

void MemoryBackend::inject_error(std::string_view name, uint64_t offset, uint64_t length,
                                 Code code) {
  if (auto v = find(name)) v->set_fault(offset, length, code);
}

void MemoryBackend::clear_error(std::string_view name) {
  if (auto v = find(name)) v->set_fault(0, 0, Code::kOk);
}

MemoryExportStats MemoryBackend::stats(std::string_view name) const {
  auto v = find(name);
  return v ? v->stats() : MemoryExportStats{};
}

Result<std::vector<ExportInfo>> MemoryBackend::list_exports() {
  std::lock_guard lock(mu_);
  std::vector<ExportInfo> out;
  for (const auto& [name, v] : volumes_) out.push_back(v->info());
  return out;
}

Result<ExportInfo> MemoryBackend::export_info(std::string_view name) {
  auto v = find(name);
  if (!v) return make_error(Code::kNotFound, "no export '{}'", name);
  return v->info();
}

Result<std::vector<std::string>> MemoryBackend::meta_contexts(std::string_view /*name*/,
                                                             std::string_view query,
                                                             MetaQuery kind) {
  std::vector<std::string> out;
  if (parse_stripes(query) != 0) {
    out.emplace_back(query);
  } else if (kind == MetaQuery::kList &&
             (query.empty() || query == "memory:" || query == kStripesPrefix)) {
    out.emplace_back(kStripesPrefix);  // the family: any N works
  }
  return out;
}

Result<std::unique_ptr<Export>> MemoryBackend::open_export(std::string_view name) {
  auto v = find(name);
  if (!v) return make_error(Code::kNotFound, "no export '{}'", name);
  return std::unique_ptr<Export>(new MemoryExport(std::move(v), completer_));
}

}  // namespace multisnap::nbd
