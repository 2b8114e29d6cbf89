#include "nbd/transmission.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <thread>

#include "nbd/error_map.h"
#include "nbd/protocol.h"
#include "util/log.h"

namespace multisnap::nbd {
namespace {

using namespace proto;

// Buffers of free slots are kept for reuse while all slot buffers of the
// connection together stay below this; beyond it a buffer is freed when its
// request is done, so one burst of huge requests does not pin memory.
constexpr size_t kMaxRetainedBufferBytes = 16u << 20;
// WRITE payloads at least this large are received straight into the slot.
constexpr size_t kDirectPayloadMin = 64u << 10;
// At most this many descriptors per context in a BLOCK_STATUS reply.
constexpr size_t kMaxDescriptors = 1024;
// A BLOCK_STATUS chunk: header, context id, descriptors. Each context's
// chunk is built in its own part of the slot buffer, this size apart.
constexpr size_t kStatusChunkHeader = kStructuredHeaderSize + 4;
constexpr size_t kStatusChunkSize = kStatusChunkHeader + 8 * kMaxDescriptors;
constexpr size_t kMaxErrorMessage = 1024;

uint32_t flags_of(const Extent& e) {
  return (e.hole ? kStateHole : 0) | (e.zero ? kStateZero : 0);
}
uint32_t flags_of(const ContextExtent& e) {
  return e.flags;
}

// Writes the descriptors for `extents` to out: cut at `limit` bytes (the end
// of the export), neighbours with the same flags merged, at most
// kMaxDescriptors, stopping at the first one that reaches `length`; with
// req_one a single descriptor no longer than `length`. Returns how many.
template <typename E>
size_t encode_descriptors(const std::vector<E>& extents, uint64_t limit, uint32_t length,
                          bool req_one, uint8_t* out) {
  size_t count = 0;
  uint64_t covered = 0;
  uint64_t last_len = 0;
  uint32_t last_flags = 0;
  for (const E& e : extents) {
    uint64_t len = std::min<uint64_t>(e.length, limit - covered);
    if (len == 0) break;
    uint32_t flags = flags_of(e);
    if (count > 0 && flags == last_flags && last_len + len <= UINT32_MAX) {
      last_len += len;  // same state as the previous descriptor: extend it
    } else {
      if (count == kMaxDescriptors || (req_one && count == 1)) break;
      ++count;
      last_len = len;
      last_flags = flags;
    }
    if (req_one) last_len = std::min<uint64_t>(last_len, length);
    put32(out + 8 * (count - 1), static_cast<uint32_t>(last_len));
    put32(out + 8 * (count - 1) + 4, last_flags);
    covered += len;
    if (covered >= length) break;
  }
  return count;
}

size_t add_piece(struct iovec* iov, int* n, const uint8_t* p, size_t len, size_t skip) {
  if (skip >= len) return skip - len;
  iov[*n].iov_base = const_cast<uint8_t*>(p + skip);
  iov[*n].iov_len = len - skip;
  ++*n;
  return 0;
}

}  // namespace

void Transmission::Buffer::ensure(size_t n) {
  if (n <= capacity_) return;
  size_t rounded = (n + 4095) & ~size_t{4095};
  data_.reset(new uint8_t[rounded]);
  capacity_ = rounded;
}

Transmission::Transmission(NegotiatedExport negotiated, const TransmissionLimits& limits,
                           std::function<void()> wake)
    : export_(std::move(negotiated.exp)),
      contexts_(std::move(negotiated.contexts)),
      params_(negotiated.params),
      context_{&params_, negotiated.structured_replies, !contexts_.empty()},
      limits_(limits),
      wake_(std::move(wake)),
      slots_(std::max<uint32_t>(limits.max_requests, 1)) {
  uint32_t n = static_cast<uint32_t>(slots_.size());
  free_.reserve(n);
  for (uint32_t i = n; i > 0; --i) free_.push_back(i - 1);
  ready_.reserve(n);
  ready_taken_.reserve(n);
  send_ring_.resize(n);
}

Transmission::~Transmission() {
  assert(in_flight_ == 0);
  // A completion thread may still be between handing over its result and
  // returning from the wake (push_ready): a few instructions and a write to
  // an eventfd.
  while (waking_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

// ---- Input

size_t Transmission::consume(const uint8_t* data, size_t size) {
  size_t used = 0;
  while (!input_stopped_ && !broken() && used < size) {
    const uint8_t* p = data + used;
    size_t left = size - used;
    size_t n = 0;
    switch (input_) {
      case InputState::kHeader:
        if (left < kRequestSize || !admit_header(p)) return used;
        n = kRequestSize;
        break;
      case InputState::kPayload: {
        Slot& s = slots_[current_];
        n = std::min<size_t>(left, s.req.length - payload_done_);
        std::memcpy(s.buf.data() + payload_done_, p, n);
        direct_payload_received(n);
        break;
      }
      case InputState::kDiscard:
        n = static_cast<size_t>(std::min<uint64_t>(left, discard_left_));
        discard_left_ -= n;
        if (discard_left_ == 0) input_ = InputState::kHeader;
        break;
    }
    used += n;
  }
  return used;
}

std::span<uint8_t> Transmission::direct_payload() {
  if (input_ != InputState::kPayload || input_stopped_) return {};
  Slot& s = slots_[current_];
  size_t left = s.req.length - payload_done_;
  if (left < kDirectPayloadMin) return {};
  return {s.buf.data() + payload_done_, left};
}

void Transmission::direct_payload_received(size_t n) {
  payload_done_ += static_cast<uint32_t>(n);
  if (payload_done_ < slots_[current_].req.length) return;
  input_ = InputState::kHeader;
  dispatch(current_);
}

bool Transmission::wants_input() const {
  if (input_stopped_ || broken()) return false;
  if (input_ != InputState::kHeader) return true;
  return !free_.empty() && !budget_blocked_;
}

void Transmission::stop_input() {
  if (input_stopped_) return;
  input_stopped_ = true;
  // A request whose payload never fully arrived is dropped without a reply.
  if (input_ == InputState::kPayload) release(current_);
  input_ = InputState::kHeader;
}

bool Transmission::admit_header(const uint8_t* p) {
  if (free_.empty()) return false;
  Request r;
  if (!decode_request(p, &r)) {
    failure_ = fmt::format("bad request magic {:#010x}", get32(p));
    return false;
  }
  if (r.type == kCmdDisc) {
    MS_LOG_DEBUG("nbd: NBD_CMD_DISC");
    disconnect_requested_ = true;
    stop_input();
    return true;
  }
  uint32_t charge = payload_charge(r);
  if (charged_bytes_ > 0 && charged_bytes_ + charge > limits_.max_bytes) {
    budget_blocked_ = true;
    return false;
  }
  uint32_t idx = free_.back();
  free_.pop_back();
  Slot& s = slots_[idx];
  s.req = r;
  s.charged = charge;
  charged_bytes_ += charge;
  ++counters_.requests;
  start_request(idx);
  return true;
}

uint32_t Transmission::payload_charge(const Request& r) const {
  bool data = r.type == kCmdRead || r.type == kCmdWrite;
  return data && r.length <= params_.max_block ? r.length : 0;
}

void Transmission::start_request(uint32_t idx) {
  Slot& s = slots_[idx];
  const Request& r = s.req;
  RequestCheck check = check_request(r, context_);
  if (check.error != 0) {
    if (has_payload(r)) {
      if (r.length > limits_.max_discarded_payload) {
        failure_ = fmt::format("WRITE payload of {} bytes", r.length);
        release(idx);
        return;
      }
      discard_left_ = r.length;
      if (discard_left_ > 0) input_ = InputState::kDiscard;
    }
    return refuse(idx, check.error, check.reason);
  }
  if (has_payload(r) && r.length > 0) {
    ensure_buffer(s, r.length);
    current_ = idx;
    payload_done_ = 0;
    input_ = InputState::kPayload;
    return;
  }
  dispatch(idx);
}

void Transmission::dispatch(uint32_t idx) {
  ++in_flight_;
  Slot& s = slots_[idx];
  const Request& r = s.req;
  if (r.length == 0 && r.type != kCmdFlush) return complete(idx, Status::ok());
  bool fua = (r.flags & kCmdFlagFua) != 0;
  auto done = [this, idx](Status status) { complete(idx, status); };
  switch (r.type) {
    case kCmdRead:
      ensure_buffer(s, r.length);
      return export_->read(r.offset, r.length, s.buf.data(), done);
    case kCmdWrite: return export_->write(r.offset, r.length, s.buf.data(), fua, done);
    case kCmdFlush: return export_->flush(done);
    case kCmdTrim: return export_->trim(r.offset, r.length, fua, done);
    case kCmdCache: return export_->cache(r.offset, r.length, done);
    case kCmdWriteZeroes:
      return export_->write_zeroes(r.offset, r.length, fua, (r.flags & kCmdFlagNoHole) != 0,
                                   (r.flags & kCmdFlagFastZero) != 0, done);
    case kCmdBlockStatus: return dispatch_block_status(idx);
  }
  complete(idx, make_error(Code::kInvalidArgument, "unknown command"));
}

void Transmission::refuse(uint32_t idx, uint32_t error, const char* reason) {
  ++in_flight_;
  Slot& s = slots_[idx];
  MS_LOG_DEBUG("nbd: {} offset {} length {} refused: {}", command_name(s.req.type), s.req.offset,
               s.req.length, reason);
  s.error = error;
  s.message = reason;
  push_ready(idx);
}

// ---- Completions (any thread)

void Transmission::complete(uint32_t idx, const Status& status) {
  Slot& s = slots_[idx];
  s.error = transmission_error(status);
  if (s.error != 0) s.message = status.to_string().substr(0, kMaxErrorMessage);
  push_ready(idx);
}

void Transmission::dispatch_block_status(uint32_t idx) {
  Slot& s = slots_[idx];
  const Request r = s.req;
  const size_t n = contexts_.size();
  ensure_buffer(s, n * kStatusChunkSize);
  s.status.assign(n, {});
  s.status_pending.store(static_cast<uint32_t>(n));
  const bool req_one = (r.flags & kCmdFlagReqOne) != 0;
  const uint64_t limit = params_.size - r.offset;  // never describe past the end
  // Each context answers into its own part of the buffer, on any thread.
  auto encoder = [this, idx, r, req_one, limit](size_t i) {
    return [this, idx, i, r, req_one, limit](auto extents) {
      if (!extents.is_ok()) return context_answered(idx, i, extents.status());
      uint8_t* out = slots_[idx].buf.data() + i * kStatusChunkSize + kStatusChunkHeader;
      size_t count = encode_descriptors(*extents, limit, r.length, req_one, out);
      if (count == 0) {
        return context_answered(idx, i,
                                make_error(Code::kIoError, "the export returned no block status"));
      }
      context_answered(idx, i, static_cast<uint32_t>(8 * count));
    };
  };
  for (size_t i = 0; i < n; ++i) {
    if (contexts_[i].context) {
      contexts_[i].context->block_status(r.offset, r.length, encoder(i));
    } else {
      export_->block_status(r.offset, r.length, encoder(i));
    }
  }
}

void Transmission::context_answered(uint32_t idx, size_t context, Result<uint32_t> bytes) {
  Slot& s = slots_[idx];
  if (bytes.is_ok()) {
    s.status[context].bytes = *bytes;
  } else {
    s.status[context].status = bytes.status();
  }
  // The last context to answer completes the request; acq_rel makes the
  // others' descriptors visible to it.
  if (s.status_pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  for (const ContextStatus& c : s.status) {
    if (!c.status.is_ok()) return complete(idx, c.status);  // the whole reply is the error
  }
  s.error = 0;
  push_ready(idx);
}

void Transmission::push_ready(uint32_t idx) {
  // Once the connection thread has taken this completion (under mu_) it may
  // send the last reply and destroy the Transmission, which lives on its
  // stack; but this thread still reads sleeping_ and calls wake_ after
  // unlocking. waking_ counts the callbacks between the two: it is raised
  // before the lock (so whoever takes the completion sees it raised) and
  // the destructor waits for it to fall. (ThreadSanitizer with clang caught
  // the exchange writing into the stack after the Transmission was gone.)
  // The wake stays outside the lock: made under it, the connection thread
  // woke only to block on mu_ (4 KiB snapshot reads through the engine,
  // one connection: 49-65k against 72-76k IOPS).
  waking_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(mu_);
    ready_.push_back(idx);
  }
  if (sleeping_.exchange(false)) wake_();
  waking_.fetch_sub(1, std::memory_order_release);
}

bool Transmission::prepare_to_sleep() {
  sleeping_.store(true);
  std::lock_guard lock(mu_);
  if (ready_.empty()) return true;
  sleeping_.store(false);
  return false;
}

// ---- Replies (connection thread)

void Transmission::collect_completions() {
  {
    std::lock_guard lock(mu_);
    if (ready_.empty()) return;
    ready_.swap(ready_taken_);
  }
  uint32_t cap = static_cast<uint32_t>(send_ring_.size());
  for (uint32_t idx : ready_taken_) {
    build_reply(slots_[idx]);
    send_ring_[(send_head_ + send_count_) % cap] = idx;
    ++send_count_;
    --in_flight_;
  }
  ready_taken_.clear();
}

void Transmission::build_reply(Slot& s) {
  const Request& r = s.req;
  uint8_t* h = s.header;
  s.body = nullptr;
  s.body_len = 0;
  auto structured_header = [&](uint16_t type, uint32_t length) {
    put32(h, kStructuredReplyMagic);
    put16(h + 4, kReplyFlagDone);
    put16(h + 6, type);
    put64(h + 8, r.handle);
    put32(h + 16, length);
  };
  auto simple_header = [&](uint32_t error) {
    put32(h, kSimpleReplyMagic);
    put32(h + 4, error);
    put64(h + 8, r.handle);
    s.header_len = kSimpleReplySize;
  };

  if (s.error != 0) {
    ++counters_.errors;
    if (!context_.structured_replies) return simple_header(s.error);
    uint32_t msg_len = static_cast<uint32_t>(std::min(s.message.size(), kMaxErrorMessage));
    structured_header(kReplyTypeError, 6 + msg_len);
    put32(h + 20, s.error);
    put16(h + 24, static_cast<uint16_t>(msg_len));
    s.header_len = kStructuredHeaderSize + 6;
    s.body = reinterpret_cast<const uint8_t*>(s.message.data());
    s.body_len = msg_len;
    return;
  }
  switch (r.type) {
    case kCmdRead:
      counters_.bytes_read += r.length;
      s.body = s.buf.data();
      s.body_len = r.length;
      if (!context_.structured_replies) return simple_header(0);
      if (r.length == 0) {
        structured_header(kReplyTypeNone, 0);
        s.header_len = kStructuredHeaderSize;
        return;
      }
      structured_header(kReplyTypeOffsetData, 8 + r.length);
      put64(h + 20, r.offset);
      s.header_len = kStructuredHeaderSize + 8;
      return;
    case kCmdBlockStatus: return build_block_status_reply(s);
    case kCmdWrite: counters_.bytes_written += r.length; return simple_header(0);
    default: return simple_header(0);
  }
}

// One NBD_REPLY_TYPE_BLOCK_STATUS chunk per context, DONE on the last; each
// is completed in place and moved down so they are contiguous.
void Transmission::build_block_status_reply(Slot& s) {
  uint8_t* base = s.buf.data();
  size_t pos = 0;
  for (size_t i = 0; i < contexts_.size(); ++i) {
    uint8_t* chunk = base + i * kStatusChunkSize;
    uint32_t bytes = s.status[i].bytes;
    put32(chunk, kStructuredReplyMagic);
    put16(chunk + 4, i + 1 == contexts_.size() ? kReplyFlagDone : 0);
    put16(chunk + 6, kReplyTypeBlockStatus);
    put64(chunk + 8, s.req.handle);
    put32(chunk + 16, 4 + bytes);
    put32(chunk + 20, contexts_[i].id);
    if (chunk != base + pos) std::memmove(base + pos, chunk, kStatusChunkHeader + bytes);
    pos += kStatusChunkHeader + bytes;
  }
  s.header_len = 0;
  s.body = base;
  s.body_len = static_cast<uint32_t>(pos);
}

int Transmission::gather_output(struct iovec* iov, int max_iov) const {
  int n = 0;
  size_t skip = head_sent_;
  uint32_t cap = static_cast<uint32_t>(send_ring_.size());
  for (uint32_t k = 0; k < send_count_ && n + 2 <= max_iov; ++k) {
    const Slot& s = slots_[send_ring_[(send_head_ + k) % cap]];
    skip = add_piece(iov, &n, s.header, s.header_len, skip);
    if (s.body_len > 0) skip = add_piece(iov, &n, s.body, s.body_len, skip);
  }
  return n;
}

void Transmission::output_sent(size_t bytes) {
  uint32_t cap = static_cast<uint32_t>(send_ring_.size());
  while (bytes > 0 && send_count_ > 0) {
    uint32_t idx = send_ring_[send_head_];
    const Slot& s = slots_[idx];
    size_t left = s.header_len + s.body_len - head_sent_;
    if (bytes < left) {
      head_sent_ += bytes;
      return;
    }
    bytes -= left;
    head_sent_ = 0;
    send_head_ = (send_head_ + 1) % cap;
    --send_count_;
    release(idx);
  }
}

void Transmission::discard_output() {
  uint32_t cap = static_cast<uint32_t>(send_ring_.size());
  while (send_count_ > 0) {
    uint32_t idx = send_ring_[send_head_];
    send_head_ = (send_head_ + 1) % cap;
    --send_count_;
    release(idx);
  }
  head_sent_ = 0;
}

void Transmission::ensure_buffer(Slot& s, size_t n) {
  size_t before = s.buf.capacity();
  s.buf.ensure(n);
  buffer_bytes_ += s.buf.capacity() - before;
}

void Transmission::release(uint32_t idx) {
  Slot& s = slots_[idx];
  charged_bytes_ -= s.charged;
  s.charged = 0;
  budget_blocked_ = false;
  if (buffer_bytes_ > kMaxRetainedBufferBytes) {
    buffer_bytes_ -= s.buf.capacity();
    s.buf.reset();
  }
  free_.push_back(idx);
}

}  // namespace multisnap::nbd
