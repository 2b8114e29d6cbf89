#include "nbd/negotiation.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "nbd/error_map.h"
#include "nbd/protocol.h"
#include "util/log.h"

namespace multisnap::nbd {
namespace {

// Sequential big-endian reader over an option payload; every read checks
// that the bytes are there.
class PayloadReader {
 public:
  explicit PayloadReader(std::string_view data) : data_(data) {}
  bool u16(uint16_t* v) {
    return take(2, [&](const uint8_t* p) { *v = proto::get16(p); });
  }
  bool u32(uint32_t* v) {
    return take(4, [&](const uint8_t* p) { *v = proto::get32(p); });
  }
  // A length-prefixed string of at most kMaxStringLength bytes.
  bool string(std::string_view* s) {
    uint32_t len;
    if (!u32(&len) || len > proto::kMaxStringLength || len > remaining()) return false;
    *s = data_.substr(pos_, len);
    pos_ += len;
    return true;
  }
  size_t remaining() const { return data_.size() - pos_; }

 private:
  template <typename F>
  bool take(size_t n, F&& f) {
    if (remaining() < n) return false;
    f(reinterpret_cast<const uint8_t*>(data_.data() + pos_));
    pos_ += n;
    return true;
  }
  std::string_view data_;
  size_t pos_ = 0;
};

void append16(std::string* s, uint16_t v) {
  uint8_t b[2];
  proto::put16(b, v);
  s->append(reinterpret_cast<char*>(b), 2);
}
void append32(std::string* s, uint32_t v) {
  uint8_t b[4];
  proto::put32(b, v);
  s->append(reinterpret_cast<char*>(b), 4);
}
void append64(std::string* s, uint64_t v) {
  uint8_t b[8];
  proto::put64(b, v);
  s->append(reinterpret_cast<char*>(b), 8);
}

struct InfoRequests {
  bool name = false;
  bool description = false;
};

// A meta context query must start with a namespace and a colon.
bool has_namespace(std::string_view query) {
  size_t colon = query.find(':');
  return colon != std::string_view::npos && colon != 0;
}

void add_unique(std::vector<std::string>* names, std::string name) {
  if (std::find(names->begin(), names->end(), name) == names->end()) {
    names->push_back(std::move(name));
  }
}

}  // namespace

Negotiation::Negotiation(Backend& backend, uint32_t max_option_length, TlsMode tls)
    : backend_(backend), max_option_length_(max_option_length), tls_(tls) {}

void Negotiation::append_greeting(std::string* out) {
  append64(out, proto::kInitMagic);
  append64(out, proto::kOptionMagic);
  append16(out, proto::kFlagFixedNewstyle | proto::kFlagNoZeroes);
}

size_t Negotiation::consume(const uint8_t* data, size_t size, std::string* out) {
  size_t used = 0;
  while (state_ == State::kOptions) {
    size_t n = 0;
    if (!step(data + used, size - used, &n, out)) break;
    used += n;
  }
  return used;
}

bool Negotiation::step(const uint8_t* p, size_t size, size_t* used, std::string* out) {
  switch (step_) {
    case Step::kClientFlags: return consume_client_flags(p, size, used);
    case Step::kOptionHeader: return consume_option_header(p, size, used);
    case Step::kOptionData:
      if (size < option_length_) return false;
      *used = option_length_;
      step_ = Step::kOptionHeader;
      handle_option(std::string_view(reinterpret_cast<const char*>(p), option_length_), out);
      return true;
    case Step::kSkipOption:
      if (size == 0) return false;
      *used = std::min<size_t>(size, skip_remaining_);
      skip_remaining_ -= static_cast<uint32_t>(*used);
      if (skip_remaining_ == 0) {
        step_ = Step::kOptionHeader;
        reply_error(proto::kRepErrTooBig, "option is too large", out);
      }
      return true;
  }
  return false;
}

bool Negotiation::consume_client_flags(const uint8_t* p, size_t size, size_t* used) {
  if (size < 4) return false;
  *used = 4;
  uint32_t flags = proto::get32(p);
  if (flags & ~(proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes)) {
    fail(fmt::format("unknown client flags {:#x}", flags));
    return true;
  }
  // Clients without NBD_FLAG_C_FIXED_NEWSTYLE get fixed newstyle all the same
  // (the protocol allows it); a non-fixed client only sends EXPORT_NAME.
  no_zeroes_ = (flags & proto::kClientFlagNoZeroes) != 0;
  step_ = Step::kOptionHeader;
  return true;
}

bool Negotiation::consume_option_header(const uint8_t* p, size_t size, size_t* used) {
  if (size < proto::kOptionHeaderSize) return false;
  *used = proto::kOptionHeaderSize;
  if (proto::get64(p) != proto::kOptionMagic) {
    fail("bad option magic");
    return true;
  }
  option_ = proto::get32(p + 8);
  option_length_ = proto::get32(p + 12);
  MS_LOG_DEBUG("nbd: option {} ({}), {} bytes", proto::option_name(option_), option_,
               option_length_);
  if (option_length_ <= max_option_length_) {
    step_ = Step::kOptionData;
  } else if (option_ == proto::kOptExportName) {
    fail(fmt::format("export name of {} bytes", option_length_));
  } else if (option_length_ > kMaxSkippedOptionLength) {
    fail(fmt::format("option {} of {} bytes", option_, option_length_));
  } else {
    skip_remaining_ = option_length_;
    step_ = Step::kSkipOption;
  }
  return true;
}

void Negotiation::handle_option(std::string_view payload, std::string* out) {
  if (tls_ == TlsMode::kRequire && !tls_active_ && option_ != proto::kOptStartTls &&
      option_ != proto::kOptAbort) {
    // EXPORT_NAME cannot carry an error: the connection is dropped.
    if (option_ == proto::kOptExportName) return fail("NBD_OPT_EXPORT_NAME before TLS (TLS is required)");
    return reply_error(proto::kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first", out);
  }
  switch (option_) {
    case proto::kOptStartTls: return handle_starttls(payload, out);
    case proto::kOptExportName: return handle_export_name(payload, out);
    case proto::kOptAbort:
      // Data with ABORT is ignored, as the protocol asks.
      reply(proto::kRepAck, {}, out);
      state_ = State::kAborted;
      return;
    case proto::kOptList: return handle_list(payload, out);
    case proto::kOptInfo: return handle_info_or_go(false, payload, out);
    case proto::kOptGo: return handle_info_or_go(true, payload, out);
    case proto::kOptStructuredReply: return handle_structured_reply(payload, out);
    case proto::kOptListMetaContext: return handle_meta_context(false, payload, out);
    case proto::kOptSetMetaContext: return handle_meta_context(true, payload, out);
    default:
      reply_error(proto::kRepErrUnsup, fmt::format("option {} is not supported", option_), out);
  }
}

void Negotiation::handle_starttls(std::string_view payload, std::string* out) {
  if (tls_ == TlsMode::kOff) {
    return reply_error(proto::kRepErrUnsup, "TLS is not enabled on this server", out);
  }
  if (tls_active_) return reply_error(proto::kRepErrInvalid, "TLS is already active", out);
  if (!payload.empty()) return reply_error(proto::kRepErrInvalid, "STARTTLS takes no data", out);
  reply(proto::kRepAck, {}, out);
  state_ = State::kStartTls;
}

void Negotiation::tls_started() {
  tls_active_ = true;
  state_ = State::kOptions;
  // Nothing negotiated in the clear carries over into the TLS session.
  structured_replies_ = false;
  selected_.clear();
  selected_export_.clear();
}

void Negotiation::handle_export_name(std::string_view name, std::string* out) {
  if (name.size() > proto::kMaxStringLength) return fail("export name too long");
  auto exp = backend_.open_export(name);
  if (!exp.is_ok()) {
    return fail(fmt::format("NBD_OPT_EXPORT_NAME '{}': {}", name, exp.status().to_string()));
  }
  auto params = make_export_params((*exp)->info(), structured_replies_);
  if (!params.is_ok()) return fail(params.status().to_string());
  Status contexts = open_contexts(name, **exp);
  if (!contexts.is_ok()) {
    return fail(fmt::format("NBD_OPT_EXPORT_NAME '{}': {}", name, contexts.to_string()));
  }
  append64(out, params->size);
  append16(out, params->flags);
  if (!no_zeroes_) out->append(proto::kExportNameZeroes, '\0');
  result_.exp = std::move(exp).value();
  result_.params = *params;
  result_.structured_replies = structured_replies_;
  state_ = State::kTransmission;
}

void Negotiation::handle_list(std::string_view payload, std::string* out) {
  if (!payload.empty()) return reply_error(proto::kRepErrInvalid, "LIST takes no data", out);
  auto exports = backend_.list_exports();
  if (!exports.is_ok()) {
    return reply_error(option_error(exports.status()), exports.status().to_string(), out);
  }
  std::string data;
  for (const ExportInfo& info : *exports) {
    data.clear();
    append32(&data, static_cast<uint32_t>(info.name.size()));
    data += info.name;
    data += info.description;
    reply(proto::kRepServer, data, out);
  }
  reply(proto::kRepAck, {}, out);
}

void Negotiation::handle_info_or_go(bool go, std::string_view payload, std::string* out) {
  PayloadReader reader(payload);
  std::string_view name;
  uint16_t count = 0;
  if (!reader.string(&name) || !reader.u16(&count) || reader.remaining() != 2u * count) {
    return reply_error(proto::kRepErrInvalid, "malformed INFO/GO request", out);
  }
  InfoRequests wanted;
  for (uint16_t i = 0; i < count; ++i) {
    uint16_t item = 0;
    (void)reader.u16(&item);
    if (item == proto::kInfoName) wanted.name = true;
    if (item == proto::kInfoDescription) wanted.description = true;
  }

  std::unique_ptr<Export> exp;
  ExportInfo info;
  if (go) {
    auto opened = backend_.open_export(name);
    if (!opened.is_ok()) {
      return reply_error(option_error(opened.status()), opened.status().to_string(), out);
    }
    exp = std::move(opened).value();
    info = exp->info();
  } else {
    auto found = backend_.export_info(name);
    if (!found.is_ok()) {
      return reply_error(option_error(found.status()), found.status().to_string(), out);
    }
    info = std::move(found).value();
  }
  auto params = make_export_params(info, structured_replies_);
  if (!params.is_ok()) {
    return reply_error(proto::kRepErrPlatform, params.status().to_string(), out);
  }
  if (go) {
    Status contexts = open_contexts(name, *exp);
    if (!contexts.is_ok()) {
      return reply_error(option_error(contexts), contexts.to_string(), out);
    }
  }

  std::string data;
  append16(&data, proto::kInfoExport);
  append64(&data, params->size);
  append16(&data, params->flags);
  reply(proto::kRepInfo, data, out);
  // Block sizes go out whether asked for or not: they are enforced.
  data.clear();
  append16(&data, proto::kInfoBlockSize);
  append32(&data, params->min_block);
  append32(&data, params->preferred_block);
  append32(&data, params->max_block);
  reply(proto::kRepInfo, data, out);
  if (wanted.name) {
    data.clear();
    append16(&data, proto::kInfoName);
    data += info.name;
    reply(proto::kRepInfo, data, out);
  }
  if (wanted.description) {
    data.clear();
    append16(&data, proto::kInfoDescription);
    data += info.description;
    reply(proto::kRepInfo, data, out);
  }
  reply(proto::kRepAck, {}, out);
  if (!go) return;

  result_.exp = std::move(exp);
  result_.params = *params;
  result_.structured_replies = structured_replies_;
  state_ = State::kTransmission;
}

void Negotiation::handle_structured_reply(std::string_view payload, std::string* out) {
  if (!payload.empty()) {
    return reply_error(proto::kRepErrInvalid, "STRUCTURED_REPLY takes no data", out);
  }
  structured_replies_ = true;
  reply(proto::kRepAck, {}, out);
}

void Negotiation::handle_meta_context(bool set, std::string_view payload, std::string* out) {
  if (set) selected_.clear();  // replaced even when this request fails
  if (!structured_replies_) {
    return reply_error(proto::kRepErrInvalid, "negotiate structured replies first", out);
  }
  PayloadReader reader(payload);
  std::string_view name;
  uint32_t count = 0;
  if (!reader.string(&name) || !reader.u32(&count)) {
    return reply_error(proto::kRepErrInvalid, "malformed meta context request", out);
  }
  std::vector<std::string_view> queries;
  for (uint32_t i = 0; i < count; ++i) {
    std::string_view query;
    if (!reader.string(&query)) {
      return reply_error(proto::kRepErrInvalid, "malformed meta context query", out);
    }
    if (!has_namespace(query)) {
      return reply_error(proto::kRepErrInvalid, "meta context query without a namespace", out);
    }
    queries.push_back(query);
  }
  if (reader.remaining() != 0) {
    return reply_error(proto::kRepErrInvalid, "trailing bytes in meta context request", out);
  }
  auto found = backend_.export_info(name);
  if (!found.is_ok()) {
    return reply_error(option_error(found.status()), found.status().to_string(), out);
  }
  auto contexts = match_contexts(name, queries, set);
  if (!contexts.is_ok()) {
    return reply_error(option_error(contexts.status()), contexts.status().to_string(), out);
  }
  if (set) {
    size_t new_names = 0;
    for (const std::string& c : *contexts) {
      if (c != proto::kBaseAllocation && !context_ids_.contains(c)) ++new_names;
    }
    if (contexts->size() > kMaxSelectedContexts ||
        context_ids_.size() + new_names > kMaxContextNames) {
      return reply_error(proto::kRepErrTooBig, "too many meta contexts", out);
    }
  }
  std::string data;
  for (std::string& c : *contexts) {
    uint32_t id = set ? context_id(c) : 0;  // LIST replies carry id 0
    data.clear();
    append32(&data, id);
    data += c;
    reply(proto::kRepMetaContext, data, out);
    if (set) selected_.push_back({id, std::move(c)});
  }
  if (set) selected_export_ = std::string(name);
  reply(proto::kRepAck, {}, out);
}

Result<std::vector<std::string>> Negotiation::match_contexts(
    std::string_view name, const std::vector<std::string_view>& queries, bool set) {
  std::vector<std::string> found;
  const MetaQuery kind = set ? MetaQuery::kSet : MetaQuery::kList;
  if (queries.empty()) {  // LIST: everything; SET: nothing
    if (set) return found;
    found.emplace_back(proto::kBaseAllocation);
    MS_ASSIGN_OR_RETURN(auto others, backend_.meta_contexts(name, "", kind));
    for (std::string& c : others) add_unique(&found, std::move(c));
    return found;
  }
  for (std::string_view query : queries) {
    if (query.starts_with("base:")) {
      // "base:" lists the namespace; other leaves are unknown and ignored.
      if (query == proto::kBaseAllocation || (!set && query == "base:")) {
        add_unique(&found, proto::kBaseAllocation);
      }
      continue;
    }
    MS_ASSIGN_OR_RETURN(auto matched, backend_.meta_contexts(name, query, kind));
    for (std::string& c : matched) add_unique(&found, std::move(c));
  }
  return found;
}

uint32_t Negotiation::context_id(const std::string& context) {
  if (context == proto::kBaseAllocation) return kBaseAllocationContextId;
  uint32_t next = kBaseAllocationContextId + 1 + static_cast<uint32_t>(context_ids_.size());
  return context_ids_.try_emplace(context, next).first->second;
}

// On failure nothing is kept: contexts must not outlive the Export, which
// the caller then drops.
Status Negotiation::open_contexts(std::string_view name, Export& exp) {
  std::vector<NegotiatedContext> opened;
  if (selected_export_ == name) {
    for (const SelectedContext& c : selected_) {
      if (c.id == kBaseAllocationContextId) {
        opened.push_back({c.id, nullptr});
        continue;
      }
      MS_ASSIGN_OR_RETURN(auto context, exp.open_meta_context(c.name));
      opened.push_back({c.id, std::move(context)});
    }
  }
  result_.contexts = std::move(opened);
  return Status::ok();
}

void Negotiation::reply(uint32_t type, std::string_view data, std::string* out) const {
  append64(out, proto::kOptionReplyMagic);
  append32(out, option_);
  append32(out, type);
  append32(out, static_cast<uint32_t>(data.size()));
  out->append(data);
}

void Negotiation::reply_error(uint32_t type, std::string_view message, std::string* out) const {
  MS_LOG_DEBUG("nbd: option {} refused ({:#x}): {}", proto::option_name(option_), type, message);
  reply(type, message.substr(0, proto::kMaxStringLength), out);
}

void Negotiation::fail(std::string reason) {
  state_ = State::kFailed;
  failure_ = std::move(reason);
}

NegotiatedExport Negotiation::take_export() {
  return std::move(result_);
}

}  // namespace multisnap::nbd
