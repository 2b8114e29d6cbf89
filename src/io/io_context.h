// IoContext: asynchronous block I/O for one thread (the engine's).
//
// submit() queues an operation; its `done` callback runs later inside run(),
// on the thread calling run(), never inside submit(). The IoOp must stay
// alive (and not move) until `done` has been called. Only wake() may be
// called from other threads.
//
// Implementations:
//  * make_uring_io_context(): io_uring for devices with a file descriptor,
//    synchronous fallback for the rest (and for discard / write-zeroes).
//  * make_sync_io_context(): executes each op at submit, completes at run().
//  * make_default_io_context(): io_uring, or the synchronous one (with a
//    warning in the log) where io_uring is not available.
// Tests add their own (a reordering one: tests/support/test_io_context.h).
#pragma once

#include <functional>
#include <memory>

#include "io/block_device.h"

namespace multisnap {

struct IoOp {
  enum class Kind : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };
  Kind kind = Kind::kRead;
  bool fua = false;  // kWrite: durable on completion
  BlockDevice* dev = nullptr;
  uint64_t offset = 0;
  void* buf = nullptr;  // kRead: destination; kWrite: source
  uint64_t len = 0;
  std::function<void(Status)> done;
  // kWrite: buffer, offset and length are multiples of kDirectAlign, so the
  // write may bypass the page cache (the device's direct_fd(), io_uring
  // only; a refusal falls back to the page cache).
  bool direct = false;
  uint64_t progress = 0;  // bytes already transferred (short I/O); internal
};

// Runs the op synchronously on its device.
Status execute_sync(IoOp& op);
// Calls op's done callback. The callback is moved out first: it may destroy
// the op (and the object holding it) while it runs.
inline void complete(IoOp* op, Status status) {
  auto done = std::move(op->done);
  done(std::move(status));
}

class IoContext {
 public:
  virtual ~IoContext() = default;
  virtual void submit(IoOp* op) = 0;
  // Runs ready completions. With wait, blocks until at least one is ready, or
  // wake() is called, or timeout_ms passes (-1: no timeout). Returns how many
  // completions ran.
  virtual size_t run(bool wait, int timeout_ms = -1) = 0;
  virtual void wake() = 0;
  // Hands operations submitted so far to the device now, where submit()
  // only queues them until run(). Default: nothing to do.
  virtual void kick() {}
  virtual size_t in_flight() const = 0;
};

std::unique_ptr<IoContext> make_sync_io_context();
Result<std::unique_ptr<IoContext>> make_uring_io_context(unsigned entries = 256);
std::unique_ptr<IoContext> make_default_io_context();

}  // namespace multisnap
