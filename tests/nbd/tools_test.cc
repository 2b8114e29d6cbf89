// The server against libnbd's command-line tools (libnbd-bin), when they are
// installed: nbdinfo --list, nbdinfo --map and nbdcopy.
#include <gtest/gtest.h>

#include <cstdio>
#include <sstream>
#include <string>

#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {

bool have_tool(const char* name) {
  std::string cmd = std::string("command -v ") + name + " >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// Runs a shell command; its stdout, or nullopt when it fails.
std::optional<std::string> run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return std::nullopt;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (pclose(p) != 0) return std::nullopt;
  return out;
}

class ToolsTest : public ServerTest {
 protected:
  std::string uri(std::string_view name) const {
    return "'nbd+unix:///" + std::string(name) + "?socket=" + socket_path_ + "'";
  }
};

TEST_F(ToolsTest, NbdinfoListShowsEveryExport) {
  if (!have_tool("nbdinfo"))
    GTEST_SKIP() << "nbdinfo is not installed (apt-get install libnbd-bin)";
  auto out = run("nbdinfo --list --json " + uri(""));
  ASSERT_TRUE(out) << "nbdinfo --list failed";
  for (const char* expected :
       {"\"export-name\": \"origin\"", "\"export-name\": \"snapshot/1\"",
        "\"export-name\": \"aligned\"", "\"description\": \"the origin\"",
        "\"description\": \"snapshot 1\"", "\"export-size\": 1048576", "\"export-size\": 262144",
        "\"is_read_only\": true", "\"block_size_minimum\": 512"}) {
    EXPECT_NE(out->find(expected), std::string::npos) << expected << " missing from\n" << *out;
  }
}

// nbdinfo --map prints "offset length type description" per extent.
struct MapLine {
  uint64_t offset;
  uint64_t length;
  uint32_t type;
  bool operator==(const MapLine&) const = default;
};
std::vector<MapLine> parse_map(const std::string& out) {
  std::vector<MapLine> lines;
  std::istringstream in(out);
  MapLine l;
  std::string rest;
  while (in >> l.offset >> l.length >> l.type && std::getline(in, rest)) lines.push_back(l);
  return lines;
}

TEST_F(ToolsTest, NbdinfoMapShowsHolesAndData) {
  if (!have_tool("nbdinfo"))
    GTEST_SKIP() << "nbdinfo is not installed (apt-get install libnbd-bin)";
  std::string data(65536, 'd');
  ASSERT_TRUE(backend_->write("origin", 131072, data.data(), data.size()).is_ok());
  auto out = run("nbdinfo --map " + uri("origin"));
  ASSERT_TRUE(out) << "nbdinfo --map failed";
  EXPECT_EQ(parse_map(*out),
            (std::vector<MapLine>{{0, 131072, 3}, {131072, 65536, 0}, {196608, 851968, 3}}))
      << *out;
  EXPECT_NE(out->find("hole,zero"), std::string::npos) << *out;
}

TEST_F(ToolsTest, NbdcopyRoundTrip) {
  if (!have_tool("nbdcopy"))
    GTEST_SKIP() << "nbdcopy is not installed (apt-get install libnbd-bin)";
  std::string data(300000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i % 251);
  ASSERT_TRUE(backend_->write("origin", 4096, data.data(), data.size()).is_ok());
  std::string file = dir_.path() + "/copy.img";
  ASSERT_TRUE(run("nbdcopy " + uri("origin") + " " + file)) << "nbdcopy out failed";
  std::string back(data.size(), '\0');
  FILE* f = fopen(file.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  fseek(f, 4096, SEEK_SET);
  ASSERT_EQ(fread(back.data(), 1, back.size(), f), back.size());
  fclose(f);
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace multisnap::nbd::testing
