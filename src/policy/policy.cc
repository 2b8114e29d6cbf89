#include "policy/policy.h"

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>

namespace multisnap::policy {

using Json = nlohmann::json;

namespace {
constexpr int kVersion = 1;

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("._-:@+").find(c) != std::string_view::npos;
}

// key: in the property (short: it has 254 bytes); name: in messages.
struct Rule {
  const char* key;
  const char* name;
  uint32_t Policy::*field;
};
constexpr Rule kRules[] = {{"last", "keep_last", &Policy::keep_last},
                           {"hourly", "keep_hourly", &Policy::keep_hourly},
                           {"daily", "keep_daily", &Policy::keep_daily},
                           {"weekly", "keep_weekly", &Policy::keep_weekly},
                           {"monthly", "keep_monthly", &Policy::keep_monthly}};

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
}  // namespace

Status validate(const Policy& p) {
  if (p.every < 1 || p.every > kMaxEvery)
    return make_error(Code::kInvalidArgument, "the interval must be from 1 second to 366 days");
  uint64_t total = 0;
  for (const Rule& r : kRules) {
    if (p.*r.field > kMaxKeep)
      return make_error(Code::kInvalidArgument, "{} must be at most {}", r.name, kMaxKeep);
    total += p.*r.field;
  }
  if (total == 0)
    return make_error(Code::kInvalidArgument,
                      "a policy must keep something: give --keep-last, --keep-hourly, --keep-daily, "
                      "--keep-weekly or --keep-monthly");
  if (p.prefix.empty() || p.prefix.size() > kMaxPrefix ||
      !std::all_of(p.prefix.begin(), p.prefix.end(), name_char))
    return make_error(Code::kInvalidArgument, "the prefix must be 1 to {} of letters, digits and . _ - : @ +",
                      kMaxPrefix);
  if (p.first_id < 1 || p.first_id > (1ull << 32))
    return make_error(Code::kInvalidArgument, "first_id is out of range");
  return Status::ok();
}

std::string to_property(const Policy& p) {
  Json j;
  j["v"] = kVersion;
  j["every"] = p.every;
  for (const Rule& r : kRules)
    if (p.*r.field) j[r.key] = p.*r.field;
  j["prefix"] = p.prefix;
  j["on_full"] = on_full_name(p.on_full);
  j["set_at"] = p.set_at;
  j["first_id"] = p.first_id;
  return j.dump();
}

Result<Policy> from_property(std::string_view text) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return make_error(Code::kCorruption, "the stored policy is not a JSON object");
  if (!j.contains("v") || !j["v"].is_number_integer() || j["v"].get<int64_t>() != kVersion)
    return make_error(Code::kNotSupported, "the stored policy has an unknown version");
  auto unsigned_field = [&](const char* key, uint64_t* out) -> Status {
    if (!j.contains(key)) return Status::ok();
    if (!j[key].is_number_unsigned())
      return make_error(Code::kCorruption, "the stored policy's {} is not a whole number", key);
    *out = j[key].get<uint64_t>();
    return Status::ok();
  };
  Policy p;
  p.every = 0;
  MS_TRY(unsigned_field("every", &p.every));
  for (const Rule& r : kRules) {
    uint64_t v = 0;
    MS_TRY(unsigned_field(r.key, &v));
    if (v > kMaxKeep) return make_error(Code::kCorruption, "the stored policy's {} is too large", r.key);
    p.*r.field = static_cast<uint32_t>(v);
  }
  MS_TRY(unsigned_field("first_id", &p.first_id));
  if (j.contains("set_at")) {
    if (!j["set_at"].is_number_integer())
      return make_error(Code::kCorruption, "the stored policy's set_at is not a whole number");
    p.set_at = j["set_at"].get<int64_t>();
  }
  if (!j.contains("prefix") || !j["prefix"].is_string())
    return make_error(Code::kCorruption, "the stored policy has no prefix");
  p.prefix = j["prefix"].get<std::string>();
  if (j.contains("on_full")) {
    if (!j["on_full"].is_string()) return make_error(Code::kCorruption, "the stored policy's on_full is not a string");
    auto f = parse_on_full(j["on_full"].get<std::string>());
    if (!f.is_ok()) return f.status();
    p.on_full = *f;
  }
  Status s = validate(p);
  if (!s.is_ok()) return Status(Code::kCorruption, "the stored policy is invalid: " + s.message());
  return p;
}

Result<uint64_t> parse_duration(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view unit = text.substr(digits);
  uint64_t mult = 0;
  if (unit.empty() || unit == "s") mult = 1;
  else if (unit == "m") mult = 60;
  else if (unit == "h") mult = 3600;
  else if (unit == "d") mult = 86400;
  else if (unit == "w") mult = 7 * 86400;
  if (digits == 0 || digits > 9 || mult == 0)
    return make_error(Code::kInvalidArgument, "'{}' is not a duration (e.g. 30s, 5m, 1h, 1d)", text);
  uint64_t n = std::stoull(std::string(text.substr(0, digits)));
  uint64_t s = n * mult;
  if (s < 1 || s > kMaxEvery)
    return make_error(Code::kInvalidArgument, "the interval {} must be from 1 second to 366 days", text);
  return s;
}

std::string format_duration(uint64_t seconds) {
  struct U {
    uint64_t n;
    char c;
  };
  for (U u : {U{7 * 86400, 'w'}, U{86400, 'd'}, U{3600, 'h'}, U{60, 'm'}})
    if (seconds >= u.n && seconds % u.n == 0) return std::to_string(seconds / u.n) + u.c;
  return std::to_string(seconds) + "s";
}

std::string_view on_full_name(OnFull f) { return f == OnFull::kError ? "error" : "delete-oldest"; }

Result<OnFull> parse_on_full(std::string_view text) {
  if (text == "error") return OnFull::kError;
  if (text == "delete-oldest") return OnFull::kDeleteOldest;
  return make_error(Code::kInvalidArgument, "on-full must be error or delete-oldest, not '{}'", text);
}

std::string snapshot_name(std::string_view prefix, int64_t t) {
  time_t secs = static_cast<time_t>(t);
  tm u;
  gmtime_r(&secs, &u);
  char buf[24];
  strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &u);
  return std::string(prefix) + "-" + buf;
}

std::optional<int64_t> parse_snapshot_name(std::string_view prefix, std::string_view name) {
  constexpr size_t kStamp = 16;  // YYYYMMDDTHHMMSSZ
  if (name.size() != prefix.size() + 1 + kStamp || name.substr(0, prefix.size()) != prefix ||
      name[prefix.size()] != '-')
    return std::nullopt;
  std::string_view st = name.substr(prefix.size() + 1);
  for (size_t i = 0; i < kStamp; ++i) {
    bool want_digit = i != 8 && i != 15;
    if (want_digit != (st[i] >= '0' && st[i] <= '9')) return std::nullopt;
  }
  if (st[8] != 'T' || st[15] != 'Z') return std::nullopt;
  auto num = [&](size_t at, size_t n) { return std::stoi(std::string(st.substr(at, n))); };
  tm u{};
  u.tm_year = num(0, 4) - 1900;
  u.tm_mon = num(4, 2) - 1;
  u.tm_mday = num(6, 2);
  u.tm_hour = num(9, 2);
  u.tm_min = num(11, 2);
  u.tm_sec = num(13, 2);
  int64_t t = static_cast<int64_t>(timegm(&u));
  // Refuse what timegm normalised (month 13, 31 February...).
  if (snapshot_name(prefix, t) != name) return std::nullopt;
  return t;
}

std::vector<AutoSnapshot> automatic(const Policy& p, const std::vector<Snapshot>& all) {
  std::vector<AutoSnapshot> out;
  for (const Snapshot& s : all) {
    if (s.id < p.first_id) continue;
    if (auto t = parse_snapshot_name(p.prefix, s.name)) out.push_back({s.id, *t});
  }
  std::sort(out.begin(), out.end(), [](const AutoSnapshot& a, const AutoSnapshot& b) { return a.id < b.id; });
  return out;
}

int64_t next_due(const Policy& p, const std::vector<AutoSnapshot>& autos) {
  int64_t base = p.set_at;
  for (const AutoSnapshot& a : autos) base = std::max(base, a.time);
  return base + static_cast<int64_t>(p.every);
}

int64_t hour_of(int64_t t) { return floor_div(t, 3600); }
int64_t day_of(int64_t t) { return floor_div(t, 86400); }
// 1970-01-01 was a Thursday: day 4 (5 January) starts the first full week.
int64_t week_of(int64_t t) { return floor_div(day_of(t) + 3, 7); }
int64_t month_of(int64_t t) {
  time_t secs = static_cast<time_t>(t);
  tm u;
  gmtime_r(&secs, &u);
  return (u.tm_year + 1900) * 12LL + u.tm_mon;
}

std::vector<uint64_t> to_prune(const Policy& p, std::vector<AutoSnapshot> autos) {
  std::sort(autos.begin(), autos.end(), [](const AutoSnapshot& a, const AutoSnapshot& b) {
    return a.time != b.time ? a.time > b.time : a.id > b.id;  // newest first
  });
  std::vector<bool> keep(autos.size(), false);
  for (size_t i = 0; i < autos.size() && i < p.keep_last; ++i) keep[i] = true;
  auto by_bucket = [&](uint32_t n, int64_t (*bucket)(int64_t)) {
    uint32_t kept = 0;
    std::optional<int64_t> last;
    for (size_t i = 0; i < autos.size() && kept < n; ++i) {
      int64_t b = bucket(autos[i].time);
      if (last && *last == b) continue;  // not the newest of its bucket
      last = b;
      keep[i] = true;
      ++kept;
    }
  };
  by_bucket(p.keep_hourly, hour_of);
  by_bucket(p.keep_daily, day_of);
  by_bucket(p.keep_weekly, week_of);
  by_bucket(p.keep_monthly, month_of);
  std::vector<uint64_t> out;
  for (size_t i = 0; i < autos.size(); ++i)
    if (!keep[i]) out.push_back(autos[i].id);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace multisnap::policy
