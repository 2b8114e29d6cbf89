#include "util/units.h"

#include <gtest/gtest.h>

namespace multisnap {

TEST(ParseSize, AcceptsSuffixes) {
  EXPECT_EQ(*parse_size("4096"), 4096u);
  EXPECT_EQ(*parse_size("64K"), 65536u);
  EXPECT_EQ(*parse_size("64k"), 65536u);
  EXPECT_EQ(*parse_size("64KiB"), 65536u);
  EXPECT_EQ(*parse_size("10G"), 10ull << 30);
  EXPECT_EQ(*parse_size("1.5M"), 1536u * 1024);
  EXPECT_EQ(*parse_size("2T"), 2ull << 40);
  EXPECT_EQ(*parse_size("512B"), 512u);
}

TEST(ParseSize, RejectsGarbage) {
  for (const char* bad : {"", "abc", "12Q", "-1", "1.3", "64KQ", "1e400", "K"}) {
    auto r = parse_size(bad);
    EXPECT_FALSE(r.is_ok()) << bad;
    if (!r.is_ok()) {
      EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
    }
  }
}

TEST(FormatSize, IsReadable) {
  EXPECT_EQ(format_size(512), "512 B");
  EXPECT_EQ(format_size(65536), "64 KiB");
  EXPECT_EQ(format_size(3ull << 29), "1.5 GiB");
}

}  // namespace multisnap
