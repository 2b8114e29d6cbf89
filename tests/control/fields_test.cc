// The typed field accessors (src/control/fields.h) and the per-command
// decoders (src/control/requests.h): every JSON type in every field gives a
// value or kInvalidArgument naming the field, never an exception.
#include "control/fields.h"

#include <gtest/gtest.h>

#include "control/requests.h"

namespace multisnap::control {
namespace {

// One value of every JSON type (and the awkward numbers).
std::vector<Json> every_type() {
  return {Json(nullptr),
          Json(true),
          Json(false),
          Json(0),
          Json(1),
          Json(-1),
          Json(int64_t{INT64_MIN}),
          Json(uint64_t{1} << 32),
          Json(UINT64_MAX),
          Json(1.5),
          Json(2.0),
          Json(""),
          Json("x"),
          Json("12"),
          Json(std::string(100000, 'a')),
          Json::array(),
          Json::array({1, 2}),
          Json::object(),
          Json::object({{"a", 1}}),
          Json::binary({1, 2, 3})};
}

Json with(std::string_view field, const Json& v) {
  Json r{{"command", "x"}};
  r[std::string(field)] = v;
  return r;
}

void expect_invalid(const Status& s, std::string_view field) {
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find(std::string("\"") + std::string(field) + "\""), std::string::npos)
      << s.message();
}

TEST(FieldsTest, BoolAcceptsOnlyBooleansAndTreatsNullAsAbsent) {
  EXPECT_FALSE(*optional_bool(Json::object(), "force"));
  EXPECT_FALSE(*optional_bool(with("force", nullptr), "force"));
  EXPECT_EQ(*optional_bool(with("force", true), "force"), std::optional<bool>(true));
  EXPECT_EQ(*bool_or(with("force", false), "force", true), false);
  EXPECT_EQ(*bool_or(with("force", nullptr), "force", true), true);
  for (const Json& v : every_type()) {
    if (v.is_boolean() || v.is_null()) continue;
    auto r = optional_bool(with("force", v), "force");
    ASSERT_FALSE(r.is_ok()) << v.dump();
    expect_invalid(r.status(), "force");
    EXPECT_NE(r.status().message().find("true or false"), std::string::npos);
  }
  // "yes" from the issue report, and the number forms of a bool.
  EXPECT_FALSE(bool_or(with("force", "yes"), "force", false).is_ok());
  EXPECT_FALSE(bool_or(with("force", 1), "force", false).is_ok());
}

TEST(FieldsTest, StringAcceptsOnlyStringsUpToTheLimit) {
  EXPECT_EQ(**optional_string(with("name", "abc"), "name"), "abc");
  EXPECT_EQ(**optional_string(with("name", ""), "name"), "");
  EXPECT_FALSE(*optional_string(with("name", nullptr), "name"));
  for (const Json& v : every_type()) {
    if (v.is_string() || v.is_null()) continue;
    auto r = optional_string(with("name", v), "name");
    ASSERT_FALSE(r.is_ok()) << v.dump();
    expect_invalid(r.status(), "name");
  }
  auto r = optional_string(with("name", std::string(kMaxStringField + 1, 'a')), "name");
  ASSERT_FALSE(r.is_ok());
  expect_invalid(r.status(), "name");
  EXPECT_TRUE(optional_string(with("name", std::string(10, 'a')), "name", 10).is_ok());
}

TEST(FieldsTest, UnsignedChecksTypeAndRange) {
  EXPECT_EQ(**optional_uint(with("n", 7), "n"), 7u);
  EXPECT_EQ(**optional_uint(with("n", UINT64_MAX), "n"), UINT64_MAX);
  EXPECT_FALSE(*optional_uint(Json::object(), "n"));
  for (const Json& v : {Json(-1), Json(1.0), Json(1.5), Json("7"), Json(true), Json::array({7})}) {
    auto r = optional_uint(with("n", v), "n");
    ASSERT_FALSE(r.is_ok()) << v.dump();
    expect_invalid(r.status(), "n");
  }
  EXPECT_FALSE(optional_uint(with("n", 11), "n", 1, 10).is_ok());
  EXPECT_FALSE(optional_uint(with("n", 0), "n", 1, 10).is_ok());
  EXPECT_TRUE(optional_uint(with("n", 10), "n", 1, 10).is_ok());
}

TEST(FieldsTest, SnapshotRefIsAnIdOrAName) {
  auto id = *required_snapshot(with("s", 3), "s");
  EXPECT_EQ(id.id, std::optional<uint32_t>(3));
  EXPECT_EQ(id.key(), "3");
  EXPECT_EQ(required_snapshot(with("s", UINT32_MAX), "s")->id, std::optional<uint32_t>(UINT32_MAX));
  EXPECT_EQ(required_snapshot(with("s", "4294967295"), "s")->id,
            std::optional<uint32_t>(UINT32_MAX));
  EXPECT_EQ(required_snapshot(with("s", "007"), "s")->key(), "7");
  auto name = *required_snapshot(with("s", "nightly"), "s");
  EXPECT_FALSE(name.id);
  EXPECT_EQ(name.key(), "nightly");
  EXPECT_TRUE(name.is_name("nightly"));
  for (const Json& v :
       {Json(nullptr), Json(-1), Json(uint64_t{1} << 32), Json(UINT64_MAX), Json(1.5), Json(3.0),
        Json(""), Json("4294967296"), Json(std::string(30, '9')), Json(true), Json::array(),
        Json::object(), Json(std::string(kMaxStringField + 1, 'a'))}) {
    auto r = required_snapshot(with("s", v), "s");
    ASSERT_FALSE(r.is_ok()) << v.dump().substr(0, 40);
    expect_invalid(r.status(), "s");
  }
  EXPECT_FALSE(*optional_snapshot(Json::object(), "s"));
}

TEST(FieldsTest, NonObjectRequestsHaveNoFields) {
  EXPECT_FALSE(*optional_bool(Json::array({true}), "force"));
  EXPECT_FALSE(required_snapshot(Json("x"), "s").is_ok());
}

TEST(FieldsTest, MessagesQuoteAtMostABoundedPrefixOnCharacterBoundaries) {
  EXPECT_EQ(quote_for_message("short"), "short");
  std::string s = std::string(63, 'a') + "\xc3\xa9" + "tail";  // é straddles byte 64
  EXPECT_EQ(quote_for_message(s), std::string(63, 'a') + "...");
  auto r = required_snapshot(with(std::string(1000, 'f'), true), std::string(1000, 'f'));
  ASSERT_FALSE(r.is_ok());
  EXPECT_LT(r.status().message().size(), 300u);
}

TEST(RequestsTest, SnapshotCreate) {
  auto a = *parse_snapshot_create(Json{{"command", "snapshot-create"}});
  EXPECT_FALSE(a.of);
  EXPECT_EQ(a.name, "");
  a = *parse_snapshot_create(Json{{"of", "origin"}, {"name", "n"}, {"future-field", {1, 2}}});
  EXPECT_FALSE(a.of);
  EXPECT_EQ(a.name, "n");
  a = *parse_snapshot_create(Json{{"of", 2}, {"name", nullptr}});
  EXPECT_EQ(a.of->id, std::optional<uint32_t>(2));
  for (const Json& v : every_type()) {
    if (v.is_null()) continue;
    auto of = parse_snapshot_create(Json{{"of", v}});
    bool of_ok =
        (v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= UINT32_MAX) ||
        (v.is_string() && !v.get<std::string>().empty() &&
         v.get<std::string>().size() <= kMaxStringField);
    EXPECT_EQ(of.is_ok(), of_ok) << v.dump().substr(0, 40);
    if (!of.is_ok()) expect_invalid(of.status(), "of");
    auto name = parse_snapshot_create(Json{{"name", v}});
    EXPECT_EQ(name.is_ok(), v.is_string() && v.get<std::string>().size() <= kMaxStringField);
    if (!name.is_ok()) expect_invalid(name.status(), "name");
  }
}

TEST(RequestsTest, SnapshotDelete) {
  auto a = *parse_snapshot_delete(Json{{"snapshot", "3"}});
  ASSERT_EQ(a.snapshots.size(), 1u);
  EXPECT_EQ(a.snapshots[0].id, std::optional<uint32_t>(3));
  EXPECT_FALSE(a.force);
  EXPECT_FALSE(a.batch);
  EXPECT_TRUE(parse_snapshot_delete(Json{{"snapshot", 1}, {"force", true}})->force);
  expect_invalid(parse_snapshot_delete(Json{{"command", "snapshot-delete"}}).status(), "snapshot");
  expect_invalid(parse_snapshot_delete(Json{{"snapshot", 1}, {"force", "yes"}}).status(), "force");
  for (const Json& v : every_type()) {
    auto r = parse_snapshot_delete(Json{{"snapshot", 1}, {"force", v}});
    EXPECT_EQ(r.is_ok(), v.is_boolean() || v.is_null()) << v.dump().substr(0, 40);
  }
}

TEST(RequestsTest, SnapshotDeleteOfSeveral) {
  auto a = *parse_snapshot_delete(Json{{"snapshots", Json::array({3, "7", "nightly"})}, {"force", true}});
  ASSERT_EQ(a.snapshots.size(), 3u);
  EXPECT_TRUE(a.batch);
  EXPECT_TRUE(a.force);
  EXPECT_EQ(a.snapshots[0].id, std::optional<uint32_t>(3));
  EXPECT_EQ(a.snapshots[1].id, std::optional<uint32_t>(7));
  EXPECT_TRUE(a.snapshots[2].is_name("nightly"));
  // null is absent, as for every field.
  EXPECT_TRUE(parse_snapshot_delete(Json{{"snapshots", Json::array({1})}, {"snapshot", nullptr}}).is_ok());
  EXPECT_TRUE(parse_snapshot_delete(Json{{"snapshot", 1}, {"snapshots", nullptr}}).is_ok());
  expect_invalid(parse_snapshot_delete(Json{{"snapshots", Json::array({1})}, {"snapshot", 2}}).status(), "snapshots");
  expect_invalid(parse_snapshot_delete(Json{{"snapshots", Json::array()}}).status(), "snapshots");
  expect_invalid(parse_snapshot_delete(Json{{"snapshots", Json::array({1, ""})}}).status(), "snapshots");
  expect_invalid(parse_snapshot_delete(Json{{"snapshots", Json::array({1, 4294967296ull})}}).status(), "snapshots");
  expect_invalid(parse_snapshot_delete(Json{{"snapshots", Json::array({Json::array({1})})}}).status(), "snapshots");
  Json many = Json::array();
  for (size_t i = 0; i <= kMaxDeleteBatch; ++i) many.push_back(i + 1);
  expect_invalid(parse_snapshot_delete(Json{{"snapshots", many}}).status(), "snapshots");
  many.erase(many.end() - 1);
  EXPECT_EQ(parse_snapshot_delete(Json{{"snapshots", many}})->snapshots.size(), kMaxDeleteBatch);
  for (const Json& v : every_type()) {
    auto r = parse_snapshot_delete(Json{{"snapshots", v}});
    EXPECT_FALSE(r.is_ok() && !v.is_array()) << v.dump().substr(0, 40);
  }
}

}  // namespace
}  // namespace multisnap::control
