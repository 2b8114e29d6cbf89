// Transmission: the transmission phase of one connection, without sockets.
//
// The connection thread feeds it the bytes the client sent (consume); it
// parses every complete request, checks it (request.h) and dispatches it to
// the Export at once, without waiting for earlier requests. The Export
// completes requests in any order, on any thread, possibly inside the call.
// The connection thread then moves completed requests to the send queue
// (collect_completions) and sends their replies with one writev of many
// iovecs (gather_output / output_sent).
//
// Per-request state lives in a fixed pool of slots (limits.max_requests), so
// a connection never has more requests in flight than that, nor more payload
// bytes than limits.max_bytes (a single request may exceed it when nothing
// else is in flight). A slot is taken when a header is parsed and released
// when its reply has been sent; its buffer is reused.
//
//   header -> [payload] -> dispatched -> completed -> in send queue -> sent
//                                    (any thread)   (connection thread)
//
// Threading: everything here is called by the connection thread, except the
// completion callbacks the Export runs (any thread). Those touch only their
// own slot and the ready list (under mu_), then call `wake` if the
// connection thread said it was about to sleep (prepare_to_sleep). The
// connection thread may take the last completion and destroy the
// Transmission before that wake returns: the destructor waits for it
// (waking_).
//
// The Transmission owns the Export. It must not be destroyed while
// in_flight() > 0: the Export still holds callbacks into it.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "nbd/backend.h"
#include "nbd/negotiation.h"
#include "nbd/request.h"

namespace multisnap::nbd {

struct TransmissionLimits {
  uint32_t max_requests = 64;    // requests between header parsed and reply sent
  size_t max_bytes = 64u << 20;  // READ/WRITE payload bytes of those requests
  // A refused WRITE's payload is read and dropped up to this size; a longer
  // one is a protocol violation (the connection is dropped).
  size_t max_discarded_payload = 64u << 20;
};

struct TransmissionCounters {
  uint64_t requests = 0;
  uint64_t bytes_read = 0;     // READ payload sent to the client
  uint64_t bytes_written = 0;  // WRITE payload accepted from the client
  uint64_t errors = 0;         // error replies
};

class Transmission {
 public:
  Transmission(NegotiatedExport negotiated, const TransmissionLimits& limits,
               std::function<void()> wake);
  ~Transmission();
  Transmission(const Transmission&) = delete;
  Transmission& operator=(const Transmission&) = delete;

  // ---- Input
  // Parses and dispatches requests from data[0, size); returns the bytes
  // used. Stops early at the in-flight bounds, after NBD_CMD_DISC, or on a
  // protocol violation; the caller keeps the rest for a later call.
  size_t consume(const uint8_t* data, size_t size);
  // While a large WRITE payload is being received: where the rest of it
  // goes, so the caller can recv() straight into it. Empty otherwise.
  std::span<uint8_t> direct_payload();
  void direct_payload_received(size_t n);
  // True when consume() would make progress with more bytes.
  bool wants_input() const;
  // No more requests will be parsed (DISC, end of stream, shutdown).
  void stop_input();
  bool input_stopped() const { return input_stopped_; }
  // A protocol violation: the stream cannot continue (bad magic, ...).
  bool broken() const { return !failure_.empty(); }
  const std::string& failure() const { return failure_; }
  // NBD_CMD_DISC was received.
  bool disconnect_requested() const { return disconnect_requested_; }

  // ---- Completions and output
  void collect_completions();
  bool has_output() const { return send_count_ > 0; }
  // Fills up to max_iov iovecs with unsent reply bytes, in order.
  int gather_output(struct iovec* iov, int max_iov) const;
  // `bytes` of what gather_output returned were sent.
  void output_sent(size_t bytes);
  // The peer is gone: drop every queued reply.
  void discard_output();
  // Requests dispatched (or refused) whose completion was not yet collected.
  uint32_t in_flight() const { return in_flight_; }
  bool finished() const { return input_stopped_ && in_flight_ == 0 && send_count_ == 0; }

  // The connection thread calls prepare_to_sleep() before blocking: false
  // means completions are waiting (do not block). After waking: woke().
  bool prepare_to_sleep();
  void woke() { sleeping_.store(false); }

  const TransmissionCounters& counters() const { return counters_; }
  const ExportInfo& export_info() const { return export_->info(); }

 private:
  class Buffer {
   public:
    uint8_t* data() { return data_.get(); }
    size_t capacity() const { return capacity_; }
    void ensure(size_t n);  // contents are not preserved
    void reset() {
      data_.reset();
      capacity_ = 0;
    }

   private:
    std::unique_ptr<uint8_t[]> data_;
    size_t capacity_ = 0;
  };

  // BLOCK_STATUS: what one context answered.
  struct ContextStatus {
    Status status;
    uint32_t bytes = 0;  // descriptor bytes in the context's part of the buffer
  };

  struct Slot {
    Request req;
    Buffer buf;            // READ data, WRITE payload or BLOCK_STATUS chunks (one part per context)
    uint32_t charged = 0;  // bytes counted against limits.max_bytes
    uint32_t error = 0;    // NBD errno of the reply
    std::vector<ContextStatus> status;         // BLOCK_STATUS: one per context ...
    std::atomic<uint32_t> status_pending{0};  // ... and how many have not answered
    std::string message;                       // error text for a structured error chunk
    uint8_t header[32];
    uint32_t header_len = 0;
    const uint8_t* body = nullptr;  // sent after the header
    uint32_t body_len = 0;
  };

  enum class InputState { kHeader, kPayload, kDiscard };

  bool admit_header(const uint8_t* p);
  void start_request(uint32_t idx);
  void dispatch(uint32_t idx);
  void refuse(uint32_t idx, uint32_t error, const char* reason);
  void complete(uint32_t idx, const Status& status);
  void dispatch_block_status(uint32_t idx);
  // One context of a BLOCK_STATUS answered: `bytes` of descriptors, or an error.
  void context_answered(uint32_t idx, size_t context, Result<uint32_t> bytes);
  void build_block_status_reply(Slot& slot);
  void push_ready(uint32_t idx);
  void build_reply(Slot& slot);
  void release(uint32_t idx);
  void ensure_buffer(Slot& slot, size_t n);
  uint32_t payload_charge(const Request& r) const;

  std::unique_ptr<Export> export_;
  // After export_, so destroyed before it.
  const std::vector<NegotiatedContext> contexts_;
  const ExportParams params_;
  const RequestContext context_;
  const TransmissionLimits limits_;
  const std::function<void()> wake_;

  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  size_t charged_bytes_ = 0;
  bool budget_blocked_ = false;  // a parsed header waits for charged bytes to drop
  size_t buffer_bytes_ = 0;      // capacity of all slot buffers
  uint32_t in_flight_ = 0;

  InputState input_ = InputState::kHeader;
  uint32_t current_ = 0;       // slot receiving a payload
  uint32_t payload_done_ = 0;  // bytes of it received
  uint64_t discard_left_ = 0;
  bool input_stopped_ = false;
  bool disconnect_requested_ = false;
  std::string failure_;

  std::mutex mu_;
  std::vector<uint32_t> ready_;        // completed, guarded by mu_
  std::vector<uint32_t> ready_taken_;  // connection thread's copy
  std::atomic<bool> sleeping_{false};
  std::atomic<uint32_t> waking_{0};  // completion callbacks inside push_ready

  std::vector<uint32_t> send_ring_;  // slots whose replies are queued, in order
  uint32_t send_head_ = 0;
  uint32_t send_count_ = 0;
  size_t head_sent_ = 0;  // bytes of the first queued reply already sent

  TransmissionCounters counters_;
};

}  // namespace multisnap::nbd
