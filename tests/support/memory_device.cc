#include "support/memory_device.h"

#include <algorithm>
#include <cstring>

namespace multisnap {

MemoryDevice::MemoryDevice(uint64_t size, std::string name) : size_(size), name_(std::move(name)) {}

Result<uint64_t> MemoryDevice::resize(uint64_t size) {
  std::lock_guard lock(mu_);
  if (size > size_) size_ = size;
  return size_.load();
}

void MemoryDevice::image_write(Image& img, uint64_t offset, const uint8_t* data, size_t len) {
  while (len > 0) {
    uint64_t page = offset / kPage;
    size_t in_page = offset % kPage;
    size_t n = std::min(len, kPage - in_page);
    auto& p = img[page];
    if (!p) {
      p = std::make_unique<Page>();
      p->fill(0);
    }
    std::memcpy(p->data() + in_page, data, n);
    offset += n;
    data += n;
    len -= n;
  }
}

void MemoryDevice::image_read(const Image& img, uint64_t offset, uint8_t* data, size_t len) {
  while (len > 0) {
    uint64_t page = offset / kPage;
    size_t in_page = offset % kPage;
    size_t n = std::min(len, kPage - in_page);
    auto it = img.find(page);
    if (it == img.end()) std::memset(data, 0, n);
    else std::memcpy(data, it->second->data() + in_page, n);
    offset += n;
    data += n;
    len -= n;
  }
}

Status MemoryDevice::read(uint64_t offset, void* buf, size_t len) {
  MS_TRY(check_range(offset, len));
  std::lock_guard lock(mu_);
  image_read(current_, offset, static_cast<uint8_t*>(buf), len);
  return Status::ok();
}

Status MemoryDevice::write_locked(uint64_t offset, const uint8_t* data, size_t len) {
  image_write(current_, offset, data, len);
  // A disk writes whole sectors: log the sectors as they are after the
  // write, so a crash keeps or loses each one whole.
  uint64_t start = offset / kSector * kSector;
  uint64_t end = std::min(size_.load(), (offset + len + kSector - 1) / kSector * kSector);
  std::vector<uint8_t> sectors;  // filled page by page, not zeroed first (that showed under ASan)
  sectors.reserve(end - start);
  for (uint64_t off = start; off < end;) {
    size_t in_page = off % kPage;
    size_t n = std::min<uint64_t>(end - off, kPage - in_page);
    auto it = current_.find(off / kPage);
    if (it == current_.end()) sectors.insert(sectors.end(), n, uint8_t{0});
    else sectors.insert(sectors.end(), it->second->data() + in_page, it->second->data() + in_page + n);
    off += n;
  }
  log_.push_back({start, std::move(sectors)});
  ++writes_;
  return Status::ok();
}

Status MemoryDevice::write(uint64_t offset, const void* buf, size_t len) {
  MS_TRY(check_range(offset, len));
  std::lock_guard lock(mu_);
  return write_locked(offset, static_cast<const uint8_t*>(buf), len);
}

Status MemoryDevice::flush() {
  std::lock_guard lock(mu_);
  for (const auto& w : log_) image_write(durable_, w.offset, w.data.data(), w.data.size());
  log_.clear();
  ++flushes_;
  return Status::ok();
}

Status MemoryDevice::discard(uint64_t offset, uint64_t len) { return write_zeroes(offset, len); }

Status MemoryDevice::write_zeroes(uint64_t offset, uint64_t len) {
  MS_TRY(check_range(offset, len));
  std::lock_guard lock(mu_);
  std::vector<uint8_t> zeros(static_cast<size_t>(len), 0);
  return write_locked(offset, zeros.data(), zeros.size());
}

Result<std::vector<BlockDevice::Extent>> MemoryDevice::allocation(uint64_t offset, uint64_t len) {
  MS_TRY(check_range(offset, len));
  std::lock_guard lock(mu_);
  std::vector<Extent> out;
  uint64_t pos = offset, end = offset + len;
  while (pos < end) {
    uint64_t page_end = std::min(end, (pos / kPage + 1) * kPage);
    bool hole = current_.find(pos / kPage) == current_.end();
    if (!out.empty() && out.back().hole == hole) out.back().length += page_end - pos;
    else out.push_back({page_end - pos, hole});
    pos = page_end;
  }
  return out;
}

void MemoryDevice::crash(std::mt19937_64& rng, const CrashOptions& options) {
  std::lock_guard lock(mu_);
  std::bernoulli_distribution keep(options.keep_probability);
  std::vector<size_t> kept;
  for (size_t i = 0; i < log_.size(); ++i)
    if (keep(rng)) kept.push_back(i);
  size_t torn = kept.size();
  if (options.tear && !kept.empty())
    torn = std::uniform_int_distribution<size_t>(0, kept.size() - 1)(rng);
  for (size_t k = 0; k < kept.size(); ++k) {
    const Pending& w = log_[kept[k]];
    if (k != torn) {
      image_write(durable_, w.offset, w.data.data(), w.data.size());
      continue;
    }
    // Torn: each sector of the write independently made it or not.
    std::bernoulli_distribution coin(0.5);
    for (size_t off = 0; off < w.data.size(); off += kSector) {
      size_t n = std::min<size_t>(kSector, w.data.size() - off);
      if (coin(rng)) image_write(durable_, w.offset + off, w.data.data() + off, n);
    }
  }
  log_.clear();
  current_.clear();
  for (const auto& [page, data] : durable_) current_[page] = std::make_unique<Page>(*data);
}

std::unique_ptr<MemoryDevice> MemoryDevice::crashed_copy(std::mt19937_64& rng, const CrashOptions& options) const {
  auto out = std::make_unique<MemoryDevice>(size_, name_);
  {
    std::lock_guard lock(mu_);
    for (const auto& [page, p] : durable_) out->durable_[page] = std::make_unique<Page>(*p);
    out->log_ = log_;
  }
  out->crash(rng, options);  // builds its current image from the durable one
  return out;
}

size_t MemoryDevice::unflushed_writes() const {
  std::lock_guard lock(mu_);
  return log_.size();
}

void MemoryDevice::apply(const TraceOp& op) {
  if (op.kind == TraceOp::Kind::kFlush) {
    flush().ignore();
    return;
  }
  write(op.offset, op.data.data(), op.data.size()).ignore();
}

void MemoryDevice::poke(uint64_t offset, const void* buf, size_t len) {
  std::lock_guard lock(mu_);
  image_write(current_, offset, static_cast<const uint8_t*>(buf), len);
  image_write(durable_, offset, static_cast<const uint8_t*>(buf), len);
}

std::unique_ptr<MemoryDevice> MemoryDevice::copy_image(bool durable) const {
  auto out = std::make_unique<MemoryDevice>(size_, name_);
  std::lock_guard lock(mu_);
  for (const auto& [page, p] : durable ? durable_ : current_) {
    out->current_[page] = std::make_unique<Page>(*p);
    out->durable_[page] = std::make_unique<Page>(*p);
  }
  return out;
}

uint64_t MemoryDevice::write_count() const {
  std::lock_guard lock(mu_);
  return writes_;
}

uint64_t MemoryDevice::flush_count() const {
  std::lock_guard lock(mu_);
  return flushes_;
}

}  // namespace multisnap
