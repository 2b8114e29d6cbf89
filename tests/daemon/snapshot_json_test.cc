// The snapshot objects of snapshot-list and snapshot-create answers: the
// formatter that writes them by hand must give byte for byte what the
// nlohmann object it replaced gave through control::to_text (below, as it
// was), for every name a store can hold.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "daemon/replication.h"
#include "util/clock.h"

namespace multisnap {
namespace {

using control::Json;

// The object as daemon.cc and replication.cc built it before (issue 11).
Json reference_json(const SnapshotInfo& s, std::string_view parent_name, const SnapshotSpaceBytes* space) {
  Json j;
  j["id"] = s.id;
  j["name"] = s.name.empty() ? Json(nullptr) : Json(s.name);
  if (s.parent == kOriginId) j["of"] = nullptr;
  else j["of"] = {{"id", s.parent}, {"name", parent_name.empty() ? Json(nullptr) : Json(parent_name)}};
  j["created"] = iso8601(s.created_ns);
  j["uuid"] = s.uuid.to_string();
  j["written"] = (s.flags & kSnapshotWritten) != 0;
  j["export"] = "snapshot/" + std::to_string(s.id);
  if (space) {
    j["exclusive_bytes"] = space->exclusive;
    j["shared_bytes"] = space->shared;
  }
  return j;
}

// Names a store can hold: the control socket only makes printable ones,
// but a name is read from the store as its bytes (a store from elsewhere,
// damage), so anything.
const std::vector<std::string>& tricky_names() {
  static const std::vector<std::string> names = {
      "",
      "base",
      "daily-2024-01-01T00:00:00",
      "a\"quote",
      "back\\slash",
      "\"\\\"",
      std::string("nul\0byte", 8),
      "tab\tnew\nline\rcr\bbs\fff",
      "\x01\x02\x1f\x7f",
      "caf\xc3\xa9",                      // é
      "\xe2\x82\xac euro",                // €
      "\xf0\x9f\x98\x80",                 // an emoji (4 bytes)
      "bad\xff",                          // not UTF-8
      "\xfe\xff",
      "cut\xe2\x82",                      // a sequence cut short at the end
      "cut\xe2\x82 in the middle",
      "\xc0\xaf overlong",
      "\x80 lone continuation",
      "\xed\xa0\x80 surrogate",
      "\xf4\x90\x80\x80 past U+10FFFF",
      "\xc3\xa9\xff\xc3\xa9",
      std::string(64, 'x'),
      std::string(64, '\xff'),
  };
  return names;
}

TEST(SnapshotJsonTest, TheFormatterGivesWhatTheJsonObjectGave) {
  Uuid u;
  for (size_t i = 0; i < u.bytes.size(); ++i) u.bytes[i] = static_cast<uint8_t>(0x11 * i + 3);
  const std::vector<SnapshotSpaceBytes> spaces = {{0, 0}, {65536, 1ull << 40}, {UINT64_MAX, UINT64_MAX - 1}};
  size_t checked = 0;
  for (const std::string& name : tricky_names()) {
    for (const std::string& parent_name : tricky_names()) {
      for (SnapshotId parent : {kOriginId, SnapshotId{1}, SnapshotId{UINT32_MAX - 1}}) {
        if (parent == kOriginId && !parent_name.empty()) continue;  // no parent, no parent name
        for (int variant = 0; variant < 4; ++variant) {
          SnapshotInfo s;
          s.id = variant == 0 ? 1 : variant == 1 ? 4242 : UINT32_MAX;
          s.parent = parent;
          s.name = name;
          s.created_ns = variant == 0 ? 0 : 1733011200123456789ull + variant;
          s.uuid = u;
          s.flags = variant % 2 ? kSnapshotWritten : 0;
          const SnapshotSpaceBytes* space = variant == 0 ? nullptr : &spaces[variant - 1];
          std::string text;
          append_snapshot_json(text, s, parent_name, space);
          ASSERT_EQ(text, control::to_text(reference_json(s, parent_name, space)))
              << "name " << Json(name).dump(-1, ' ', true, Json::error_handler_t::replace) << " parent "
              << parent << " variant " << variant;
          if (!space) {
            ASSERT_EQ(control::to_text(snapshot_json(s, parent_name)), text);
          }
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 1000u);
}

TEST(SnapshotJsonTest, AppendsAfterWhatIsThere) {
  SnapshotInfo s;
  s.id = 7;
  std::string text = "[1,";
  append_snapshot_json(text, s, "");
  EXPECT_EQ(text, "[1," + control::to_text(reference_json(s, "", nullptr)));
  EXPECT_EQ(text.substr(0, 17), "[1,{\"created\":\"19");
}

}  // namespace
}  // namespace multisnap
