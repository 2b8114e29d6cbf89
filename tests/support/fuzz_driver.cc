#include "support/fuzz_driver.h"

#include <sys/uio.h>

#include <string>
#include <vector>

#include "support/memory_backend.h"
#include "nbd/negotiation.h"
#include "nbd/transmission.h"

namespace multisnap::nbd {
namespace {

MemoryBackend& fuzz_backend() {
  static MemoryBackend* backend = [] {
    auto* b = new MemoryBackend();
    (void)b->add_export({.name = "disk", .description = "fuzz disk", .size = 1 << 20});
    (void)b->add_export({.name = "ro", .size = 64 << 10, .read_only = true, .min_block = 512});
    (void)b->add_export({.name = "small",
                         .size = 4096 + 512,
                         .min_block = 512,
                         .max_block = 4096,
                         .can_trim = false});
    return b;
  }();
  return *backend;
}

// Splits the input into reads of 1..64 bytes, or all at once.
class Chunker {
 public:
  Chunker(const uint8_t* data, size_t size, uint8_t mode) : data_(data), size_(size), mode_(mode) {}
  bool done() const { return pos_ >= size_; }
  std::pair<const uint8_t*, size_t> next() {
    size_t n = mode_ < 32 ? size_ - pos_ : std::min<size_t>(size_ - pos_, 1 + (pos_ * mode_) % 64);
    auto piece = std::make_pair(data_ + pos_, n);
    pos_ += n;
    return piece;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  uint8_t mode_;
  size_t pos_ = 0;
};

void drain_output(Transmission& tx, FuzzRun& run) {
  tx.collect_completions();
  struct iovec iov[64];
  while (tx.has_output()) {
    int n = tx.gather_output(iov, 64);
    size_t bytes = 0;
    for (int i = 0; i < n; ++i) bytes += iov[i].iov_len;
    tx.output_sent(bytes);
    run.reply_bytes += bytes;
  }
}

void run_transmission(NegotiatedExport negotiated, std::vector<uint8_t>& pending, Chunker& chunker,
                      FuzzRun& run) {
  TransmissionLimits limits;
  limits.max_requests = 8;
  limits.max_bytes = 256 << 10;
  limits.max_discarded_payload = 1 << 20;
  Transmission tx(std::move(negotiated), limits, [] {});
  for (;;) {
    size_t used = tx.consume(pending.data(), pending.size());
    pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(used));
    drain_output(tx, run);
    if (tx.input_stopped() || tx.broken()) break;
    if (tx.wants_input() && !pending.empty() && used > 0) continue;
    if (chunker.done()) break;
    auto [p, n] = chunker.next();
    pending.insert(pending.end(), p, p + n);
  }
  tx.stop_input();
  drain_output(tx, run);
  run.counters = tx.counters();
}

}  // namespace

FuzzRun run_fuzz_input(const uint8_t* data, size_t size) {
  FuzzRun run;
  if (size == 0) return run;
  Chunker chunker(data + 1, size - 1, data[0]);
  Negotiation negotiation(fuzz_backend(), 4096);
  std::string out;
  Negotiation::append_greeting(&out);
  std::vector<uint8_t> pending;
  while (negotiation.state() == Negotiation::State::kOptions && !chunker.done()) {
    auto [p, n] = chunker.next();
    pending.insert(pending.end(), p, p + n);
    size_t used = negotiation.consume(pending.data(), pending.size(), &out);
    pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(used));
    out.clear();
  }
  if (negotiation.state() != Negotiation::State::kTransmission) return run;
  run.negotiated = true;
  run_transmission(negotiation.take_export(), pending, chunker, run);
  return run;
}

}  // namespace multisnap::nbd
