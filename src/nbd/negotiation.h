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
// SET_META_CONTEXT ("base:allocation", which the server serves itself, and
// whatever contexts the Backend offers: Backend::meta_contexts), and
// STARTTLS when TLS is configured. Anything else gets NBD_REP_ERR_UNSUP.
//
// TLS (TlsMode): kOff answers STARTTLS with ERR_UNSUP. kOn and kRequire ACK
// it and enter kStartTls: the caller runs the TLS handshake and calls
// tls_started(), after which everything (options, then transmission) goes
// through the TLS session. Bytes the client sent after STARTTLS, before the
// handshake, are a protocol violation (they would be plaintext injected
// into the TLS conversation). kRequire answers every option but STARTTLS
// and ABORT with ERR_TLS_REQD until TLS is up (EXPORT_NAME, which cannot
// carry an error, fails the connection). What was negotiated before
// STARTTLS (structured replies, meta contexts) is forgotten after it.
// Options longer than max_option_length are skipped and refused with
// NBD_REP_ERR_TOO_BIG; longer than kMaxSkippedOptionLength, or with a bad
// IHAVEOPT magic, the connection fails (the caller drops it).
//
// Not thread-safe: one connection thread owns it. It calls the Backend, which
// must outlive it; the Export it opens is handed over by take_export().
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "nbd/backend.h"
#include "nbd/export_params.h"

namespace multisnap::nbd {

// The id the server gives "base:allocation" in NBD_OPT_SET_META_CONTEXT.
// Other contexts get 2, 3, ... in the order a connection first selects
// them; a name keeps its id for the whole connection.
inline constexpr uint32_t kBaseAllocationContextId = 1;

// One metadata context selected for the transmission phase.
struct NegotiatedContext {
  uint32_t id = 0;
  std::unique_ptr<MetaContext> context;  // null: base:allocation (Export::block_status)
};

// What a successful negotiation hands to the transmission phase.
struct NegotiatedExport {
  std::unique_ptr<Export> exp;
  ExportParams params;
  bool structured_replies = false;
  // Selected by the last SET_META_CONTEXT for this export; BLOCK_STATUS
  // answers one chunk per context, in this order. Empty: BLOCK_STATUS is
  // refused.
  std::vector<NegotiatedContext> contexts;
};

enum class TlsMode {
  kOff,      // STARTTLS is not supported
  kOn,       // STARTTLS is offered; plain clients are served too
  kRequire,  // nothing but STARTTLS and ABORT before TLS
};

class Negotiation {
 public:
  enum class State {
    kOptions,       // still haggling
    kStartTls,      // STARTTLS was ACKed (in `out`): run the TLS handshake, then tls_started()
    kTransmission,  // GO or EXPORT_NAME succeeded; take_export()
    kAborted,       // the client sent NBD_OPT_ABORT (the ACK is in `out`)
    kFailed,        // protocol violation or EXPORT_NAME failure; drop the connection
  };

  static constexpr uint32_t kDefaultMaxOptionLength = 64 << 10;
  static constexpr uint32_t kMaxSkippedOptionLength = 1 << 20;
  // At most this many contexts per SET_META_CONTEXT, and this many distinct
  // context names per connection (each keeps its id); beyond: ERR_TOO_BIG.
  static constexpr size_t kMaxSelectedContexts = 16;
  static constexpr size_t kMaxContextNames = 1024;

  explicit Negotiation(Backend& backend, uint32_t max_option_length = kDefaultMaxOptionLength,
                       TlsMode tls = TlsMode::kOff);

  // The server's first message: NBDMAGIC, IHAVEOPT, handshake flags.
  static void append_greeting(std::string* out);

  // Consumes complete protocol units from data[0, size) while the state is
  // kOptions, appending replies to *out. Returns the number of bytes used;
  // the caller keeps the rest and calls again with more. An option payload
  // is consumed only when all of it is present, so the caller's buffer must
  // hold at least kOptionHeaderSize + max_option_length bytes.
  size_t consume(const uint8_t* data, size_t size, std::string* out);

  State state() const { return state_; }
  // In kStartTls: the TLS handshake succeeded; back to kOptions.
  void tls_started();
  bool tls_active() const { return tls_active_; }
  // Why the state is kFailed, for the log.
  const std::string& failure() const { return failure_; }
  // Valid once, in kTransmission.
  NegotiatedExport take_export();

 private:
  enum class Step { kClientFlags, kOptionHeader, kOptionData, kSkipOption };

  // One protocol unit; false when more input is needed. *used: bytes taken.
  bool step(const uint8_t* data, size_t size, size_t* used, std::string* out);
  bool consume_client_flags(const uint8_t* data, size_t size, size_t* used);
  bool consume_option_header(const uint8_t* data, size_t size, size_t* used);
  void handle_option(std::string_view payload, std::string* out);

  void handle_starttls(std::string_view payload, std::string* out);
  void handle_export_name(std::string_view payload, std::string* out);
  void handle_list(std::string_view payload, std::string* out);
  void handle_info_or_go(bool go, std::string_view payload, std::string* out);
  void handle_structured_reply(std::string_view payload, std::string* out);
  void handle_meta_context(bool set, std::string_view payload, std::string* out);
  // The contexts `queries` match on export `name`, without duplicates.
  Result<std::vector<std::string>> match_contexts(std::string_view name,
                                                  const std::vector<std::string_view>& queries,
                                                  bool set);
  uint32_t context_id(const std::string& context);
  // Opens the contexts selected for `name` on `exp` into result_.contexts.
  Status open_contexts(std::string_view name, Export& exp);

  void reply(uint32_t type, std::string_view data, std::string* out) const;
  void reply_error(uint32_t type, std::string_view message, std::string* out) const;
  void fail(std::string reason);

  Backend& backend_;
  const uint32_t max_option_length_;
  const TlsMode tls_;
  bool tls_active_ = false;
  State state_ = State::kOptions;
  Step step_ = Step::kClientFlags;
  uint32_t option_ = 0;         // the option being processed
  uint32_t option_length_ = 0;  // its payload length
  uint32_t skip_remaining_ = 0;
  bool no_zeroes_ = false;
  bool structured_replies_ = false;
  struct SelectedContext {
    uint32_t id;
    std::string name;
  };
  std::vector<SelectedContext> selected_;  // by the last SET_META_CONTEXT ...
  std::string selected_export_;            // ... for this export name
  std::map<std::string, uint32_t, std::less<>> context_ids_;  // every name given an id
  std::string failure_;
  NegotiatedExport result_;
};

}  // namespace multisnap::nbd
