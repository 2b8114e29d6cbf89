// Whether this test binary is built with a sanitizer (test.sh's ASan/UBSan
// and ThreadSanitizer passes), which makes it 5-10 times slower. The
// randomized tests do less work there: the sanitizer passes are for memory,
// undefined-behaviour and race errors on every path; the Release pass runs
// the full randomized depth.
#pragma once

namespace multisnap::testing {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitizerBuild = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitizerBuild = true;
#else
inline constexpr bool kSanitizerBuild = false;
#endif
#else
inline constexpr bool kSanitizerBuild = false;
#endif

}  // namespace multisnap::testing
