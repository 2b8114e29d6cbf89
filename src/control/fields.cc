#include "control/fields.h"

namespace multisnap::control {

namespace {

// The value of a JSON integer >= 0. Parsed text gives unsigned numbers, but
// a Json built in C++ from an int is signed even when it is positive.
std::optional<uint64_t> as_uint(const Json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

// What a value is, for "... (got a string)".
std::string kind(const Json& v) {
  if (as_uint(v)) return "the integer " + std::to_string(*as_uint(v));
  if (v.is_number_integer()) return "the negative integer " + std::to_string(v.get<int64_t>());
  if (v.is_number_float()) return "a non-integer or out-of-range number";
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return v.type_name();
}

Status wrong_type(std::string_view field, std::string_view want, const Json& got) {
  return make_error(Code::kInvalidArgument, "field \"{}\" must be {} (got {})",
                    quote_for_message(field), want, kind(got));
}

// The field's value, or nullptr when it is absent or null (rule 1).
const Json* find(const Json& request, std::string_view field) {
  if (!request.is_object()) return nullptr;
  auto it = request.find(field);
  if (it == request.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

constexpr std::string_view kSnapshotWant =
    "a snapshot ID (an integer from 0 to 4294967295) or a snapshot name (a string)";

}  // namespace

std::string quote_for_message(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  size_t n = max_bytes;
  // Back up over UTF-8 continuation bytes so no character is split.
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return std::string(text.substr(0, n)) + "...";
}

Result<std::optional<bool>> optional_bool(const Json& request, std::string_view field) {
  const Json* v = find(request, field);
  if (!v) return std::optional<bool>();
  if (!v->is_boolean()) return wrong_type(field, "true or false", *v);
  return std::optional<bool>(v->get<bool>());
}

Result<bool> bool_or(const Json& request, std::string_view field, bool fallback) {
  MS_ASSIGN_OR_RETURN(std::optional<bool> v, optional_bool(request, field));
  return v.value_or(fallback);
}

Result<std::optional<std::string>> optional_string(const Json& request, std::string_view field,
                                                   size_t max_bytes) {
  const Json* v = find(request, field);
  if (!v) return std::optional<std::string>();
  if (!v->is_string()) return wrong_type(field, "a string", *v);
  const std::string& s = v->get_ref<const std::string&>();
  if (s.size() > max_bytes)
    return make_error(Code::kInvalidArgument, "field \"{}\" is longer than {} bytes",
                      quote_for_message(field), max_bytes);
  return std::optional<std::string>(s);
}

Result<std::optional<uint64_t>> optional_uint(const Json& request, std::string_view field,
                                              uint64_t min, uint64_t max) {
  const Json* v = find(request, field);
  if (!v) return std::optional<uint64_t>();
  std::string want = fmt::format("an integer from {} to {}", min, max);
  std::optional<uint64_t> n = as_uint(*v);
  if (!n || *n < min || *n > max) return wrong_type(field, want, *v);
  return n;
}

namespace {
// One snapshot reference: the value of `field` (or an element of it).
Result<std::optional<SnapshotRef>> snapshot_from(const Json* v, std::string_view field) {
  SnapshotRef ref;
  if (std::optional<uint64_t> id = as_uint(*v)) {
    if (*id > UINT32_MAX) return wrong_type(field, kSnapshotWant, *v);
    ref.id = static_cast<uint32_t>(*id);
    return std::optional<SnapshotRef>(ref);
  }
  if (!v->is_string()) return wrong_type(field, kSnapshotWant, *v);
  const std::string& s = v->get_ref<const std::string&>();
  if (s.empty())
    return make_error(Code::kInvalidArgument, "field \"{}\" must not be empty: give {}",
                      quote_for_message(field), kSnapshotWant);
  if (s.find_first_not_of("0123456789") == std::string::npos) {
    // All digits: an ID (names are never all digits), which must fit.
    std::optional<uint64_t> id = parse_decimal(s);
    if (!id || *id > UINT32_MAX)
      return make_error(Code::kInvalidArgument,
                        "field \"{}\": snapshot ID {} is out of range (0 to 4294967295)",
                        quote_for_message(field), quote_for_message(s));
    ref.id = static_cast<uint32_t>(*id);
    return std::optional<SnapshotRef>(ref);
  }
  if (s.size() > kMaxStringField)
    return make_error(Code::kInvalidArgument, "field \"{}\" is longer than {} bytes",
                      quote_for_message(field), kMaxStringField);
  ref.name = s;
  return std::optional<SnapshotRef>(std::move(ref));
}
}  // namespace

Result<std::optional<SnapshotRef>> optional_snapshot(const Json& request, std::string_view field) {
  const Json* v = find(request, field);
  if (!v) return std::optional<SnapshotRef>();
  return snapshot_from(v, field);
}

Result<std::optional<std::vector<SnapshotRef>>> optional_snapshots(const Json& request, std::string_view field,
                                                                   size_t max_count) {
  const Json* v = find(request, field);
  if (!v) return std::optional<std::vector<SnapshotRef>>();
  if (!v->is_array() || v->empty() || v->size() > max_count)
    return wrong_type(field, fmt::format("an array of 1 to {} snapshot references ({})", max_count, kSnapshotWant),
                      *v);
  std::vector<SnapshotRef> out;
  out.reserve(v->size());
  for (const Json& element : *v) {
    MS_ASSIGN_OR_RETURN(std::optional<SnapshotRef> ref, snapshot_from(&element, field));
    out.push_back(std::move(*ref));
  }
  return std::optional<std::vector<SnapshotRef>>(std::move(out));
}

Result<SnapshotRef> required_snapshot(const Json& request, std::string_view field) {
  MS_ASSIGN_OR_RETURN(std::optional<SnapshotRef> ref, optional_snapshot(request, field));
  if (!ref)
    return make_error(Code::kInvalidArgument, "field \"{}\" is required: give {}",
                      quote_for_message(field), kSnapshotWant);
  return std::move(*ref);
}

}  // namespace multisnap::control
