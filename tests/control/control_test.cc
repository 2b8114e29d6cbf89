// ControlServer's request handling: serve_line without sockets, then the
// framing (over-long and unterminated lines) through a real socket.
#include "control/control.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

namespace multisnap::control {
namespace {

class StringWriter : public Writer {
 public:
  bool write(std::string_view bytes) override {
    text.append(bytes);
    return true;
  }
  std::string text;
};

std::optional<Json> echo(const Json& request, Writer&) {
  return Json{{"ok", true}, {"request", request}};
}

// The one answer line serve_line wrote, parsed.
Json answer_to(std::string_view line, const Handler& handler = echo) {
  StringWriter out;
  EXPECT_TRUE(serve_line(line, handler, out));
  EXPECT_FALSE(out.text.empty());
  EXPECT_EQ(out.text.find('\n'), out.text.size() - 1) << out.text;
  Json answer = Json::parse(out.text, nullptr, false);
  EXPECT_TRUE(answer.is_object()) << out.text;
  return answer;
}

std::string code_of(const Json& answer) {
  if (answer.value("ok", true)) return "ok";
  return answer["error"]["code"].get<std::string>();
}

TEST(ServeLineTest, PassesWellFormedRequestsToTheHandler) {
  Json a = answer_to(R"({"command":"ping","extra":[1,{"a":null}]})");
  EXPECT_EQ(a["request"]["command"], "ping");
}

TEST(ServeLineTest, RejectsWhatIsNotARequest) {
  for (std::string_view line : std::vector<std::string_view>{
           "", " ", "{", "nul", "[]", "\"ping\"", "42", "null", "{}", R"({"command":null})",
           R"({"command":1})", R"({"command":["ping"]})",
           R"({"command":"ping"} {"command":"ping"})", "{\"command\":\"\xff\"}",
           R"({"command":"ping","n":1e400})", R"({"command":"ping","s":"\ud800"})",
           std::string_view("{\"command\":\"ping\"}\0junk", 23)}) {
    Json a = answer_to(line);
    EXPECT_EQ(code_of(a), "invalid-argument") << line;
    EXPECT_EQ(a["error"]["errno"], EINVAL);
  }
}

TEST(ServeLineTest, RejectsDeepNestingBeforeParsing) {
  std::string deep = R"({"command":"ping","x":)" + std::string(100000, '[');
  EXPECT_EQ(code_of(answer_to(deep)), "invalid-argument");
  std::string ok = R"({"command":"ping","x":)" + std::string(kMaxRequestDepth - 1, '[') +
                   std::string(kMaxRequestDepth - 1, ']') + "}";
  EXPECT_EQ(code_of(answer_to(ok)), "ok");
}

TEST(ServeLineTest, NestingDepthIgnoresBracketsInStrings) {
  EXPECT_EQ(nesting_depth(R"({"a":"[[[[\"[[[","b":[{}]})"), 3u);
  EXPECT_EQ(nesting_depth("]]]["), 1u);
  EXPECT_EQ(nesting_depth(""), 0u);
}

TEST(ServeLineTest, HandlerExceptionsBecomeErrorAnswers) {
  Handler type_error = [](const Json& r, Writer&) -> std::optional<Json> {
    return Json{{"ok", r["command"].get<bool>()}};  // throws json type_error
  };
  EXPECT_EQ(code_of(answer_to(R"({"command":"x"})", type_error)), "invalid-argument");
  Handler other = [](const Json&, Writer&) -> std::optional<Json> {
    throw std::runtime_error("boom");
  };
  Json a = answer_to(R"({"command":"x"})", other);
  EXPECT_EQ(code_of(a), "io-error");
  EXPECT_NE(a["error"]["message"].get<std::string>().find("boom"), std::string::npos);
  Handler silent = [](const Json&, Writer&) -> std::optional<Json> { return std::nullopt; };
  EXPECT_EQ(code_of(answer_to(R"({"command":"x"})", silent)), "io-error");
}

TEST(ServeLineTest, AHandlerThatFailsMidStreamClosesTheConnection) {
  Handler half = [](const Json&, Writer& out) -> std::optional<Json> {
    out.write("{\"snapshots\":[");
    throw std::runtime_error("page failed");
  };
  StringWriter out;
  EXPECT_FALSE(serve_line(R"({"command":"x"})", half, out));
  EXPECT_EQ(out.text, "{\"snapshots\":[");
  Handler streamed = [](const Json&, Writer& out) -> std::optional<Json> {
    out.write("{\"ok\":true}\n");
    return std::nullopt;
  };
  StringWriter out2;
  EXPECT_TRUE(serve_line(R"({"command":"x"})", streamed, out2));
  EXPECT_EQ(out2.text, "{\"ok\":true}\n");
}

TEST(ServeLineTest, AnswersWithInvalidUtf8AreStillOneValidLine) {
  Handler bad = [](const Json&, Writer&) -> std::optional<Json> {
    return Json{{"ok", true},
                {"name",
                 "a\xff\xfe"
                 "b"}};
  };
  Json a = answer_to(R"({"command":"x"})", bad);
  EXPECT_EQ(a["name"],
            "a\xef\xbf\xbd\xef\xbf\xbd"
            "b");  // U+FFFD twice
}

// ---------------------------------------------------------------- socket

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ms-control-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto s = ControlServer::start(dir_ + "/ctl", echo);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    server_ = std::move(s).value();
  }
  void TearDown() override {
    server_.reset();
    ::rmdir(dir_.c_str());
  }
  int connect_raw() {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string path = dir_ + "/ctl";
    memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    return fd;
  }
  static void send_all(int fd, std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
      ASSERT_GT(n, 0);
      s.remove_prefix(static_cast<size_t>(n));
    }
  }
  // Every byte until the server closes.
  static std::string read_to_end(int fd) {
    std::string all;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) all.append(buf, static_cast<size_t>(n));
    return all;
  }
  static std::vector<Json> lines_of(const std::string& text) {
    std::vector<Json> out;
    size_t at = 0, nl;
    while ((nl = text.find('\n', at)) != std::string::npos) {
      out.push_back(Json::parse(text.substr(at, nl - at), nullptr, false));
      at = nl + 1;
    }
    EXPECT_EQ(at, text.size()) << "an answer does not end with a newline";
    return out;
  }

  std::string dir_;
  std::unique_ptr<ControlServer> server_;
};

TEST_F(ControlServerTest, AnOverlongLineIsAnsweredAndSkipped) {
  int fd = connect_raw();
  // Sent from another thread: the server answers before it has read it all.
  std::thread sender([&] {
    send_all(fd, std::string(kMaxRequestBytes + 100000, 'x') + "\n{\"command\":\"ping\"}\n");
    ::shutdown(fd, SHUT_WR);
  });
  std::vector<Json> answers = lines_of(read_to_end(fd));
  sender.join();
  ::close(fd);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(code_of(answers[0]), "invalid-argument");
  EXPECT_EQ(code_of(answers[1]), "ok");
}

TEST_F(ControlServerTest, ALineOfExactlyTheLimitIsARequest) {
  std::string line = R"({"command":"ping","pad":")";
  line += std::string(kMaxRequestBytes - line.size() - 2, 'p') + "\"}";
  ASSERT_EQ(line.size(), kMaxRequestBytes);
  int fd = connect_raw();
  send_all(fd, line + "\n");
  ::shutdown(fd, SHUT_WR);
  std::vector<Json> answers = lines_of(read_to_end(fd));
  ::close(fd);
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(code_of(answers[0]), "ok");
}

TEST_F(ControlServerTest, AnUnterminatedLastLineGetsAnErrorAnswer) {
  int fd = connect_raw();
  send_all(fd, "{\"command\":\"ping\"}\n{\"command\":\"ping\"}");
  ::shutdown(fd, SHUT_WR);
  std::vector<Json> answers = lines_of(read_to_end(fd));
  ::close(fd);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(code_of(answers[0]), "ok");
  EXPECT_EQ(code_of(answers[1]), "invalid-argument");
  EXPECT_NE(answers[1]["error"]["message"].get<std::string>().find("newline"), std::string::npos);
}

TEST_F(ControlServerTest, ClientCallsStillWork) {
  auto client = ControlClient::connect(dir_ + "/ctl");
  ASSERT_TRUE(client.is_ok());
  for (int i = 0; i < 3; ++i) {
    auto a = (*client)->call(Json{{"command", "ping"}, {"i", i}, {"bad", "\xff"}});
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    EXPECT_TRUE(answer_status(*a).is_ok());
    EXPECT_EQ((*a)["request"]["i"], i);
  }
}

}  // namespace
}  // namespace multisnap::control
