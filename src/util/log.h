// Leveled logging to stderr: "multisnap[pid] 2026-11-21T10:00:00.123 INFO: message".
// Thread-safe; one line per call. The level is process-wide.
#pragma once

#include <string_view>

#include <fmt/format.h>

namespace multisnap {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
bool parse_log_level(std::string_view s, LogLevel* out);
void log_line(LogLevel level, std::string_view message);

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (level < log_level()) return;
  log_line(level, fmt::format(f, std::forward<Args>(args)...));
}
#define MS_LOG_DEBUG(...) ::multisnap::log(::multisnap::LogLevel::kDebug, __VA_ARGS__)
#define MS_LOG_INFO(...) ::multisnap::log(::multisnap::LogLevel::kInfo, __VA_ARGS__)
#define MS_LOG_WARN(...) ::multisnap::log(::multisnap::LogLevel::kWarn, __VA_ARGS__)
#define MS_LOG_ERROR(...) ::multisnap::log(::multisnap::LogLevel::kError, __VA_ARGS__)

}  // namespace multisnap
