// Negotiation: the fixed-newstyle handshake and option haggling of one
// connection, as a state machine over bytes. It never touches a socket: the
// caller feeds it what the client sent and sends what it appends to `out`.
// This is what the fuzzer drives.
//
//   server greeting  ->  client flags  ->  options ...  ->  transmission
//                                                      \->  aborted / failed
//
// Supported options: EXPORT_NAME, ABORT, LIST, INFO, GO (NBD_INFO_EXPORT,
// NAME, DESCRIPTION, BLOCK_SIZE), STRUCTURED_REPLY, LIST_META_CONTEXT and
// SET_META_CONTEXT ("base:allocation"). Anything else gets NBD_REP_ERR_UNSUP.
// Options longer than max_option_length are skipped and refused with
// NBD_REP_ERR_TOO_BIG; longer than kMaxSkippedOptionLength, or with a bad
// IHAVEOPT magic, the connection fails (the caller drops it).
//
// Not thread-safe: one connection thread owns it. It calls the Backend, which
// must outlive it; the Export it opens is handed over by take_export().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "nbd/backend.h"
#include "nbd/export_params.h"

namespace multisnap::nbd {

// The id the server gives "base:allocation" in NBD_OPT_SET_META_CONTEXT.
inline constexpr uint32_t kBaseAllocationContextId = 1;

// What a successful negotiation hands to the transmission phase.
struct NegotiatedExport {
  std::unique_ptr<Export> exp;
  ExportParams params;
  bool structured_replies = false;
  uint32_t meta_context_id = 0;  // kBaseAllocationContextId or 0 (none selected)
};

class Negotiation {
 public:
  enum class State {
    kOptions,       // still haggling
    kTransmission,  // GO or EXPORT_NAME succeeded; take_export()
    kAborted,       // the client sent NBD_OPT_ABORT (the ACK is in `out`)
    kFailed,        // protocol violation or EXPORT_NAME failure; drop the connection
  };

  static constexpr uint32_t kDefaultMaxOptionLength = 64 << 10;
  static constexpr uint32_t kMaxSkippedOptionLength = 1 << 20;

  explicit Negotiation(Backend& backend, uint32_t max_option_length = kDefaultMaxOptionLength);

  // The server's first message: NBDMAGIC, IHAVEOPT, handshake flags.
  static void append_greeting(std::string* out);

  // Consumes complete protocol units from data[0, size) while the state is
  // kOptions, appending replies to *out. Returns the number of bytes used;
  // the caller keeps the rest and calls again with more. An option payload
  // is consumed only when all of it is present, so the caller's buffer must
  // hold at least kOptionHeaderSize + max_option_length bytes.
  size_t consume(const uint8_t* data, size_t size, std::string* out);

  State state() const { return state_; }
  // Why the state is kFailed, for the log.
  const std::string& failure() const { return failure_; }
  // The client asked for NBD_FLAG_C_NO_ZEROES.
  bool no_zeroes() const { return no_zeroes_; }

  // Valid once, in kTransmission.
  NegotiatedExport take_export();

 private:
  enum class Step { kClientFlags, kOptionHeader, kOptionData, kSkipOption };

  // One protocol unit; false when more input is needed. *used: bytes taken.
  bool step(const uint8_t* data, size_t size, size_t* used, std::string* out);
  bool consume_client_flags(const uint8_t* data, size_t size, size_t* used);
  bool consume_option_header(const uint8_t* data, size_t size, size_t* used);
  void handle_option(std::string_view payload, std::string* out);

  void handle_export_name(std::string_view payload, std::string* out);
  void handle_list(std::string_view payload, std::string* out);
  void handle_info_or_go(bool go, std::string_view payload, std::string* out);
  void handle_structured_reply(std::string_view payload, std::string* out);
  void handle_meta_context(bool set, std::string_view payload, std::string* out);

  void reply(uint32_t type, std::string_view data, std::string* out) const;
  void reply_error(uint32_t type, std::string_view message, std::string* out) const;
  void fail(std::string reason);

  Backend& backend_;
  const uint32_t max_option_length_;
  State state_ = State::kOptions;
  Step step_ = Step::kClientFlags;
  uint32_t option_ = 0;         // the option being processed
  uint32_t option_length_ = 0;  // its payload length
  uint32_t skip_remaining_ = 0;
  bool no_zeroes_ = false;
  bool structured_replies_ = false;
  bool meta_selected_ = false;    // base:allocation selected ...
  std::string meta_export_name_;  // ... for this export name
  std::string failure_;
  NegotiatedExport result_;
};

}  // namespace multisnap::nbd
