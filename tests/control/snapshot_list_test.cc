// The client side of snapshot-list (control/snapshot_list.h): the SAX
// reader must hand over exactly the snapshots of a good answer, print them
// as the Json path did (`snapshot list --json`), and turn every bad answer
// (cut short, "ok": false after the list, fields of the wrong type) into an
// error, never a short list. Then the same through a real socket, with the
// answer arriving in small pieces.
#include "control/snapshot_list.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace multisnap::control {
namespace {

// Snapshot objects as the daemon sends them (strings already UTF-8: the
// daemon replaces what is not).
std::vector<Json> sample_snapshots(bool space) {
  std::vector<Json> list;
  const std::vector<Json> names = {nullptr, "base", "a\"quote", "back\\slash", "tab\there\nnl",
                                   std::string("nul\0x", 5), "\x01\x1f\x7f", "caf\xc3\xa9 \xe2\x82\xac",
                                   "\xf0\x9f\x98\x80", "\xef\xbf\xbd replaced"};
  uint64_t id = 1;
  for (const Json& name : names) {
    for (int of = 0; of < 3; ++of) {
      Json s;
      s["id"] = id;
      s["name"] = name;
      s["of"] = of == 0 ? Json(nullptr) : Json{{"id", id - 1}, {"name", of == 1 ? Json(nullptr) : name}};
      s["created"] = "2026-12-01T11:05:50.773Z";
      s["uuid"] = "67e4f0b4-12f6-4e1d-ac00-72776e9b2cf6";
      s["written"] = id % 2 == 0;
      s["export"] = "snapshot/" + std::to_string(id);
      if (space) {
        s["exclusive_bytes"] = id * 65536;
        s["shared_bytes"] = id == 3 ? UINT64_MAX : 0;
      }
      list.push_back(s);
      ++id;
    }
  }
  return list;
}

// The answer line as the daemon streams it: "ok" last.
std::string answer_text(const std::vector<Json>& list, const std::string& tail = ",\"ok\":true}") {
  std::string text = "{\"snapshots\":[";
  for (size_t i = 0; i < list.size(); ++i) text += (i ? "," : "") + to_text(list[i]);
  return text + "]" + tail;
}

struct Parsed {
  Result<Json> rest = Json();
  std::vector<Json> rows;
  std::string printed;  // as `snapshot list --json` prints the list
};

Parsed parse(std::string_view line) {
  Parsed p;
  size_t n = 0;
  p.printed = "[";
  p.rest = parse_snapshot_list(line, [&](const SnapshotRow& row) {
    p.rows.push_back(to_json(row));
    p.printed += n++ ? ",\n  " : "\n  ";
    append_list_element(p.printed, row);
  });
  p.printed += n ? "\n]" : "]";
  return p;
}

TEST(AppendJsonStringTest, GivesWhatToTextGives) {
  // Random bytes, weighted to the ones that need care.
  const std::string pool = std::string("\"\\\x00\x01\x1f\x7f\x80\xbf\xc0\xc3\xa9\xe2\x82\xac\xed\xa0\xf0\x9f\xf4\xff", 20) +
                           "ab \t\n";
  std::mt19937 rng(11);
  for (int i = 0; i < 50000; ++i) {
    std::string s(rng() % 12, ' ');
    for (char& c : s) c = rng() % 4 ? pool[rng() % pool.size()] : static_cast<char>(rng());
    std::string out = "x";
    append_json_string(out, s);
    ASSERT_EQ(out, "x" + to_text(Json(s))) << to_text(Json(s));
  }
}

TEST(SnapshotListTest, HandsOverEverySnapshotAndPrintsAsTheJsonPathDid) {
  for (bool space : {false, true}) {
    std::vector<Json> list = sample_snapshots(space);
    std::string tail = space ? ",\"space\":{\"exceptions\":12,\"reclaim_pending_bytes\":0,\"restarts\":0},\"ok\":true}"
                             : ",\"ok\":true}";
    Parsed p = parse(answer_text(list, tail));
    ASSERT_TRUE(p.rest.is_ok()) << p.rest.status().to_string();
    EXPECT_EQ(p.rows, list);
    EXPECT_EQ(p.printed, Json(list).dump(2));  // what the client printed from the whole answer
    EXPECT_EQ((*p.rest)["snapshots"], Json::array());
    EXPECT_EQ(p.rest->contains("space"), space);
    if (space) {
      EXPECT_EQ((*p.rest)["space"]["exceptions"], 12);
    }
  }
}

TEST(SnapshotListTest, AnEmptyListAndKeysInAnyOrder) {
  Parsed p = parse(R"({"ok":true,"snapshots":[]})");
  ASSERT_TRUE(p.rest.is_ok());
  EXPECT_TRUE(p.rows.empty());
  EXPECT_EQ(p.printed, Json::array().dump(2));
  p = parse(R"( { "snapshots" : [ {"of":{"name":null,"id":1},"export":"snapshot/2","name":"b","id":2,)"
            R"("created":"c"} ] , "ok" : true } )");
  ASSERT_TRUE(p.rest.is_ok()) << p.rest.status().to_string();
  ASSERT_EQ(p.rows.size(), 1u);
  EXPECT_EQ(p.rows[0], Json::parse(R"({"id":2,"name":"b","of":{"id":1,"name":null},"created":"c",)"
                                   R"("export":"snapshot/2"})"));
  EXPECT_EQ(p.printed, Json(p.rows).dump(2));
}

TEST(SnapshotListTest, UnknownFieldsArePrintedAsBefore) {
  std::vector<Json> list = sample_snapshots(false);
  list[1]["zeta"] = Json{1, {{"a", nullptr}}, "x"};
  list[1]["alpha"] = "first";
  list[2]["nested"] = Json{{"k", Json::array()}, {"m", Json::object()}};
  Parsed p = parse(answer_text(list));
  ASSERT_TRUE(p.rest.is_ok()) << p.rest.status().to_string();
  EXPECT_EQ(p.rows, list);
  EXPECT_EQ(p.printed, Json(list).dump(2));
}

TEST(SnapshotListTest, AFailureAfterPartOfTheListIsTheError) {
  std::vector<Json> list = sample_snapshots(false);
  Parsed p = parse(answer_text(
      list, R"(,"ok":false,"error":{"code":"corruption","errno":117,"message":"listing snapshots: bad node"}})"));
  ASSERT_FALSE(p.rest.is_ok());
  EXPECT_EQ(p.rest.status().code(), Code::kCorruption);
  EXPECT_NE(p.rest.status().to_string().find("bad node"), std::string::npos);
  // A failure before the list: the usual error answer.
  p = parse(R"({"error":{"code":"busy","errno":16,"message":"later"},"ok":false})");
  ASSERT_FALSE(p.rest.is_ok());
  EXPECT_EQ(p.rest.status().code(), Code::kBusy);
  // No "ok" at all, or no list.
  EXPECT_FALSE(parse(answer_text(list, "}")).rest.is_ok());
  EXPECT_FALSE(parse(R"({"ok":true})").rest.is_ok());
  EXPECT_FALSE(parse(R"({"ok":true,"snapshots":{}})").rest.is_ok());
}

TEST(SnapshotListTest, EveryCutShortAnswerIsAnError) {
  std::string text = answer_text(sample_snapshots(true), ",\"space\":{\"exceptions\":1},\"ok\":true}");
  ASSERT_TRUE(parse(text).rest.is_ok());
  for (size_t len = 0; len < text.size(); ++len) {
    Parsed p = parse(std::string_view(text).substr(0, len));
    ASSERT_FALSE(p.rest.is_ok()) << "cut at " << len << ": " << text.substr(0, len);
    EXPECT_EQ(p.rest.status().code(), Code::kIoError);
  }
}

TEST(SnapshotListTest, WrongTypesAreErrors) {
  const std::string good = R"({"id":2,"name":"b","of":{"id":1,"name":"a"},"created":"c","export":"e")";
  const std::vector<std::string> bad_elements = {
      R"({"id":"2","name":"b","of":null,"created":"c","export":"e"})",
      R"({"id":-2,"name":"b","of":null,"created":"c","export":"e"})",
      R"({"id":2.5,"name":"b","of":null,"created":"c","export":"e"})",
      R"({"id":2,"name":5,"of":null,"created":"c","export":"e"})",
      R"({"id":2,"name":["b"],"of":null,"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":7,"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":"origin","created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":[1],"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":{},"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":{"id":1},"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":{"id":"1","name":null},"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":{"id":1,"name":3},"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":{"id":1,"name":null,"x":[0]},"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":{"id":1,"name":{"a":1}},"created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":null,"created":null,"export":"e"})",
      R"({"id":2,"name":"b","of":null,"created":"c","export":false})",
      good + R"(,"uuid":1})",
      good + R"(,"written":"yes"})",
      good + R"(,"exclusive_bytes":-1})",
      good + R"(,"shared_bytes":"1 GiB"})",
      good + R"(,"created":{}})",
      R"({"name":"b","of":null,"created":"c","export":"e"})",  // a required field missing
      R"({"id":2,"of":null,"created":"c","export":"e"})",
      R"({"id":2,"name":"b","created":"c","export":"e"})",
      R"({"id":2,"name":"b","of":null,"export":"e"})",
      R"({"id":2,"name":"b","of":null,"created":"c"})",
      "1", "null", "\"snapshot\"", "[]", "{}",
  };
  for (const std::string& element : bad_elements) {
    Parsed p = parse(R"({"snapshots":[)" + good + "}," + element + R"(],"ok":true})");
    ASSERT_FALSE(p.rest.is_ok()) << element;
    EXPECT_EQ(p.rest.status().code(), Code::kIoError) << element;
    EXPECT_NE(p.rest.status().to_string().find("malformed"), std::string::npos) << p.rest.status().to_string();
  }
  for (const std::string& line : std::vector<std::string>{"", "[]", "null", "{\"ok\":true,}", "{\"ok\":tru}",
                                                          R"({"snapshots":[],"ok":true} {})",
                                                          "{\"snapshots\":[],\"ok\":true,\"x\":\"\xff\"}"}) {
    Parsed p = parse(line);
    EXPECT_FALSE(p.rest.is_ok()) << line;
  }
}

// ---------------------------------------------------------------- socket

class SnapshotListSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ms-list-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // snapshot-list streams answer_ in pieces of `piece` bytes, the first
    // `cut` only (then fails: the connection closes) when given.
    Handler handler = [this](const Json& req, Writer& out) -> std::optional<Json> {
      if (req["command"] != "snapshot-list") return Json{{"ok", true}};
      size_t piece = req.value("piece", size_t{7});
      size_t end = req.value("cut", answer_.size());
      for (size_t at = 0; at < end; at += piece)
        if (!out.write(std::string_view(answer_).substr(at, std::min(piece, end - at)))) return std::nullopt;
      if (end < answer_.size()) throw std::runtime_error("cut short");
      return std::nullopt;
    };
    auto s = ControlServer::start(dir_ + "/ctl", handler);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    server_ = std::move(s).value();
  }
  void TearDown() override {
    server_.reset();
    ::rmdir(dir_.c_str());
  }

  std::string dir_;
  std::string answer_;
  std::unique_ptr<ControlServer> server_;
};

TEST_F(SnapshotListSocketTest, ReadsTheAnswerAsItArrivesAndKeepsWhatFollows) {
  std::vector<Json> list = sample_snapshots(true);
  answer_ = answer_text(list) + "\n";
  for (size_t piece : {size_t{1}, size_t{7}, size_t{4096}, answer_.size()}) {
    auto client = ControlClient::connect(dir_ + "/ctl");
    ASSERT_TRUE(client.is_ok());
    // The next request goes before the list is read: its answer arrives
    // with the list's last bytes and must be kept for read_answer.
    ASSERT_TRUE((*client)->send({{"command", "snapshot-list"}, {"piece", piece}}).is_ok());
    ASSERT_TRUE((*client)->send({{"command", "ping"}}).is_ok());
    std::vector<Json> rows;
    auto rest = read_snapshot_list(**client, [&](const SnapshotRow& r) { rows.push_back(to_json(r)); });
    ASSERT_TRUE(rest.is_ok()) << rest.status().to_string();
    EXPECT_EQ(rows, list);
    auto ping = (*client)->read_answer();
    ASSERT_TRUE(ping.is_ok()) << ping.status().to_string();
    EXPECT_EQ(*ping, Json({{"ok", true}}));
  }
}

TEST_F(SnapshotListSocketTest, AConnectionThatEndsMidAnswerIsAnError) {
  answer_ = answer_text(sample_snapshots(false)) + "\n";
  for (size_t cut : {size_t{0}, size_t{1}, size_t{100}, answer_.size() - 2, answer_.size() - 1}) {
    auto client = ControlClient::connect(dir_ + "/ctl");
    ASSERT_TRUE(client.is_ok());
    ASSERT_TRUE((*client)->send({{"command", "snapshot-list"}, {"cut", cut}}).is_ok());
    size_t rows = 0;
    auto rest = read_snapshot_list(**client, [&](const SnapshotRow&) { ++rows; });
    ASSERT_FALSE(rest.is_ok()) << "cut at " << cut;
    EXPECT_EQ(rest.status().code(), Code::kIoError);
    // Cut after bytes: the handler threw, so the server closed the connection
    // (cut 0: nothing was written, so it answered the exception instead).
    if (cut > 0) {
      EXPECT_NE(rest.status().to_string().find("middle"), std::string::npos) << rest.status().to_string();
    }
  }
}

}  // namespace
// A newer server's plain field inside "of" is ignored (fields it adds at
// the top of a snapshot are kept); an error object of the wrong shape is
// still an error, never a crash.
TEST(SnapshotListTest, UnknownFieldsInOfAndOddErrorsAreHandled) {
  Parsed p = parse(R"({"snapshots":[{"id":2,"name":"b","of":{"id":1,"x":7,"name":"a"},"created":"c",)"
                   R"("export":"e"}],"ok":true})");
  ASSERT_TRUE(p.rest.is_ok()) << p.rest.status().to_string();
  ASSERT_EQ(p.rows.size(), 1u);
  EXPECT_EQ(p.rows[0]["of"], Json::parse(R"({"id":1,"name":"a"})"));
  for (const char* line : {R"({"snapshots":[],"ok":false,"error":1})", R"({"snapshots":[],"ok":false,"error":{"code":5}})",
                           R"({"snapshots":[],"ok":false,"error":{"code":"busy","message":[1]}})",
                           R"({"snapshots":[],"ok":false})"}) {
    Parsed bad = parse(line);
    EXPECT_FALSE(bad.rest.is_ok()) << line;
  }
  Parsed busy = parse(R"({"snapshots":[],"ok":false,"error":{"code":"busy","message":"m"}})");
  ASSERT_FALSE(busy.rest.is_ok());
  EXPECT_EQ(busy.rest.status().code(), Code::kBusy);
}

}  // namespace multisnap::control
