// check_origin's rules (docs/design.md 5.8) and the property's round trip.
#include "daemon/origin_identity.h"

#include <gtest/gtest.h>

#include "store/tree_traits.h"

namespace multisnap {
namespace {

OriginIdentity recorded() {
  return {"9b1c2f0e-5d4a-4e8b-a0c4-7f3e2d1b6a59", 1 << 20, 2049, 77, "/srv/origin.img"};
}

TEST(OriginIdentity, PropertyRoundTripsAndLeavesOutAPathTooLong) {
  OriginIdentity id = recorded();
  auto back = origin_from_property(to_property(id));
  ASSERT_TRUE(back.is_ok());
  EXPECT_EQ(back->uuid, id.uuid);
  EXPECT_EQ(back->size, id.size);
  EXPECT_EQ(back->dev, id.dev);
  EXPECT_EQ(back->ino, id.ino);
  EXPECT_EQ(back->path, id.path);
  id.path = "/" + std::string(300, 'p');
  std::string text = to_property(id);
  EXPECT_LE(text.size(), kMaxPropertyBytes);
  back = origin_from_property(text);
  ASSERT_TRUE(back.is_ok());
  EXPECT_EQ(back->path, "");
  EXPECT_EQ(back->uuid, id.uuid);
  EXPECT_EQ(origin_from_property("{\"v\":2}").status().code(), Code::kCorruption);
  EXPECT_EQ(origin_from_property("not json").status().code(), Code::kCorruption);
}

TEST(OriginIdentity, TheSameFileOrTheSameMarkIsServedQuietly) {
  std::vector<std::string> warnings;
  OriginIdentity seen = recorded();
  seen.uuid.clear();  // no xattr (the filesystem keeps none), same inode
  EXPECT_TRUE(check_origin(recorded(), seen, false, &warnings).is_ok());
  seen = recorded();
  seen.dev = 5, seen.ino = 6;  // moved with its xattr (mv across filesystems, cp -a)
  EXPECT_TRUE(check_origin(recorded(), seen, false, &warnings).is_ok());
  EXPECT_TRUE(warnings.empty());
}

TEST(OriginIdentity, AnotherFileOfAnotherSizeIsRefusedUnlessForced) {
  std::vector<std::string> warnings;
  OriginIdentity seen{"", 2 << 20, 5, 6, "/srv/other.img"};
  Status s = check_origin(recorded(), seen, false, &warnings);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.to_string().find("--force"), std::string::npos);
  EXPECT_TRUE(check_origin(recorded(), seen, true, &warnings).is_ok());
  ASSERT_EQ(warnings.size(), 2u);  // not recognised, and grew
}

TEST(OriginIdentity, AnotherFileOfTheSameSizeIsServedWithAWarning) {
  std::vector<std::string> warnings;
  OriginIdentity seen{"", 1 << 20, 5, 6, "/srv/copy.img"};
  EXPECT_TRUE(check_origin(recorded(), seen, false, &warnings).is_ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("same size"), std::string::npos);
}

TEST(OriginIdentity, AnOriginMarkedForAnotherStoreIsRefusedEvenIfItIsTheSameInode) {
  std::vector<std::string> warnings;
  OriginIdentity seen = recorded();
  seen.uuid = "00000000-0000-4000-8000-000000000000";
  EXPECT_EQ(check_origin(recorded(), seen, false, &warnings).code(), Code::kInvalidArgument);
  EXPECT_TRUE(check_origin(recorded(), seen, true, &warnings).is_ok());
}

TEST(OriginIdentity, AGrownOriginIsServedWithAWarning) {
  std::vector<std::string> warnings;
  OriginIdentity seen = recorded();
  seen.size = 4 << 20;
  EXPECT_TRUE(check_origin(recorded(), seen, false, &warnings).is_ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("grew"), std::string::npos);
}

}  // namespace
}  // namespace multisnap
