#include "util/status.h"

#include <gtest/gtest.h>

namespace multisnap {

namespace {
Result<int> half(int v) {
  if (v % 2) return make_error(Code::kInvalidArgument, "{} is odd", v);
  return v / 2;
}
Result<int> quarter(int v) {
  MS_ASSIGN_OR_RETURN(int h, half(v));
  MS_ASSIGN_OR_RETURN(int q, half(h));
  return q;
}
Status check_even(int v) {
  MS_TRY(half(v).status());
  return Status::ok();
}
}  // namespace

TEST(Status, CarriesCodeMessageAndErrno) {
  Status s = make_error(Code::kNoSpace, "store full: {} chunks", 10);
  EXPECT_FALSE(s.is_ok());
  EXPECT_EQ(s.to_errno(), ENOSPC);
  EXPECT_EQ(s.to_string(), "store full: 10 chunks");
  EXPECT_EQ(s.annotate("writing").to_string(), "writing: store full: 10 chunks");
  EXPECT_TRUE(Status::ok().is_ok());
}

TEST(Result, PropagatesErrors) {
  EXPECT_EQ(*quarter(8), 2);
  auto r = quarter(6);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().message(), "3 is odd");
  EXPECT_TRUE(check_even(4).is_ok());
  EXPECT_EQ(check_even(3).code(), Code::kInvalidArgument);
}

TEST(Status, ErrnoMapping) {
  EXPECT_EQ(errno_status(ENOSPC, "x").code(), Code::kNoSpace);
  EXPECT_EQ(errno_status(EIO, "x").code(), Code::kIoError);
  EXPECT_EQ(errno_status(ENOENT, "open f").code(), Code::kNotFound);
}

}  // namespace multisnap
