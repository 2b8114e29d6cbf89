// Typed access to the fields of a control request (docs/control.md, "Field
// types"). Every accessor checks the JSON type (and range) of one field and
// returns either its value or a kInvalidArgument Status whose message names
// the field and the type it must have. Nothing here throws, whatever the
// request holds: handlers read fields only through these.
//
// The rules, the same for every command:
//   1. A field that is absent and a field that is null are the same: "not
//      given". Optional accessors return nullopt; required ones fail.
//   2. Unknown fields are ignored (a newer client may send more).
//   3. No conversions: a bool is true or false (not 0, 1 or "yes"), an
//      integer is a JSON integer (not 1.0, not "1"); a snapshot reference is
//      the one field that accepts a number or a string.
//
// Thread-safe: pure functions of their arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "control/control.h"
#include "util/status.h"

namespace multisnap::control {

// Bytes a string field may hold unless the accessor is told otherwise.
constexpr size_t kMaxStringField = 4096;

// A snapshot as a request names it: by ID (a JSON integer 0..2^32-1, or a
// string of decimal digits in that range) or by name (any other non-empty
// string).
struct SnapshotRef {
  std::optional<uint32_t> id;
  std::string name;  // when !id

  bool is_name(std::string_view n) const { return !id && name == n; }
  // What Engine::find_snapshot takes: the ID in decimal, or the name.
  std::string key() const { return id ? std::to_string(*id) : name; }
};

Result<std::optional<bool>> optional_bool(const Json& request, std::string_view field);
Result<bool> bool_or(const Json& request, std::string_view field, bool fallback);

Result<std::optional<std::string>> optional_string(const Json& request, std::string_view field,
                                                   size_t max_bytes = kMaxStringField);

// A JSON integer in [min, max] (never a float, even 2.0).
Result<std::optional<uint64_t>> optional_uint(const Json& request, std::string_view field,
                                              uint64_t min = 0, uint64_t max = UINT64_MAX);

Result<std::optional<SnapshotRef>> optional_snapshot(const Json& request, std::string_view field);
Result<SnapshotRef> required_snapshot(const Json& request, std::string_view field);
// A JSON array of 1 to max_count snapshot references (each as above).
Result<std::optional<std::vector<SnapshotRef>>> optional_snapshots(const Json& request, std::string_view field,
                                                                   size_t max_count);

// `text` cut to at most `max_bytes` (on a UTF-8 character boundary, with
// "..." appended when cut), for quoting request values in error messages.
std::string quote_for_message(std::string_view text, size_t max_bytes = 64);

}  // namespace multisnap::control
