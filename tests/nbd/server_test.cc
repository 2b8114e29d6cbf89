// The Server's control API: listening, counting and disconnecting clients,
// stopping, statistics and connection events.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>

#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {

using Clock = std::chrono::steady_clock;

ExportMatcher named(std::string name) {
  return [name](std::string_view n) { return n == name; };
}

// ---- Listening

TEST(AddressTest, Parses) {
  auto u = parse_listen_address("unix:/run/x.sock");
  ASSERT_TRUE(u.is_ok());
  EXPECT_EQ(u->kind, ListenAddress::Kind::kUnix);
  EXPECT_EQ(u->path, "/run/x.sock");
  auto t = parse_listen_address("tcp::10809");
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(t->kind, ListenAddress::Kind::kTcp);
  EXPECT_EQ(t->host, "127.0.0.1");
  EXPECT_EQ(t->port, 10809);
  auto v6 = parse_listen_address("tcp:[::1]:0");
  ASSERT_TRUE(v6.is_ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->to_string(), "tcp:[::1]:0");
  EXPECT_EQ(parse_listen_address("tcp:0.0.0.0:7")->to_string(), "tcp:0.0.0.0:7");
  for (const char* bad :
       {"", "unix:", "tcp:", "tcp:host", "tcp:h:70000", "tcp:h:x", "udp:h:1", "tcp:h:-1"}) {
    EXPECT_EQ(parse_listen_address(bad).status().code(), Code::kInvalidArgument) << bad;
  }
}

class ListenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_log_level(LogLevel::kWarn);
    add_standard_exports(backend_);
  }
  Result<std::unique_ptr<Server>> start(std::vector<std::string> listen, uint32_t mode = 0600) {
    ServerOptions o;
    o.listen = std::move(listen);
    o.unix_socket_mode = mode;
    return Server::start(backend_, o);
  }
  TempDir dir_;
  MemoryBackend backend_;
};

TEST_F(ListenTest, ReportsRealAddressesAndSocketMode) {
  std::string path = dir_.path() + "/a.sock";
  auto server = start({"unix:" + path, "tcp::0"});
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  auto addresses = (*server)->addresses();
  ASSERT_EQ(addresses.size(), 2u);
  EXPECT_EQ(addresses[0], "unix:" + path);
  EXPECT_TRUE(addresses[1].starts_with("tcp:127.0.0.1:"));
  uint16_t port = (*server)->listen_addresses()[1].port;
  EXPECT_NE(port, 0);
  EXPECT_EQ(addresses[1], "tcp:127.0.0.1:" + std::to_string(port));
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto c = RawClient::connect_tcp(port);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->open("origin", false));
  (*server)->stop();
  EXPECT_NE(stat(path.c_str(), &st), 0) << "stop() removes the socket file";
}

TEST_F(ListenTest, CustomSocketModeAndAnyHost) {
  std::string path = dir_.path() + "/m.sock";
  auto server = start({"unix:" + path, "tcp:0.0.0.0:0"}, 0660);
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_TRUE((*server)->addresses()[1].starts_with("tcp:0.0.0.0:"));
}

TEST_F(ListenTest, StaleSocketFileIsReplaced) {
  std::string path = dir_.path() + "/stale.sock";
  {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    close(fd);  // the file stays, nobody listens
  }
  auto server = start({"unix:" + path});
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  auto c = RawClient::connect_unix(path);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->open("origin", false));
}

TEST_F(ListenTest, LiveSocketOrOtherFileIsNotTouched) {
  std::string path = dir_.path() + "/live.sock";
  auto first = start({"unix:" + path});
  ASSERT_TRUE(first.is_ok());
  auto second = start({"unix:" + path});
  EXPECT_EQ(second.status().code(), Code::kBusy);
  auto c = RawClient::connect_unix(path);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->open("origin", false)) << "the first server still owns the socket";

  std::string file = dir_.path() + "/regular";
  std::ofstream(file) << "data";
  EXPECT_EQ(start({"unix:" + file}).status().code(), Code::kExists);
  std::ifstream in(file);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "data");
}

TEST_F(ListenTest, AllOrNothing) {
  std::string path = dir_.path() + "/half.sock";
  EXPECT_FALSE(start({"unix:" + path, "tcp:bad:address:x"}).is_ok());
  struct stat st;
  EXPECT_NE(stat(path.c_str(), &st), 0) << "the first listener was cleaned up";
  EXPECT_EQ(start({}).status().code(), Code::kInvalidArgument);
  auto taken = start({"tcp::0"});
  ASSERT_TRUE(taken.is_ok());
  EXPECT_FALSE(start({(*taken)->addresses()[0]}).is_ok()) << "port in use";
}

// ---- Control

TEST_F(ServerTest, CountsAndDisconnectsClientsOfAnExport) {
  auto snap_a = open("snapshot/1");
  auto snap_b = open("snapshot/1", true);
  auto origin = open("");  // canonical name "origin"
  auto negotiating = connect();
  ASSERT_TRUE(snap_a && snap_b && origin && negotiating);
  ASSERT_TRUE(negotiating->handshake());
  EXPECT_EQ(server_->count_connections(named("snapshot/1")), 2u);
  EXPECT_EQ(server_->count_connections(named("origin")), 1u);
  EXPECT_EQ(server_->count_connections([](std::string_view) { return true; }), 3u);
  EXPECT_EQ(backend_->stats("snapshot/1").open_exports, 2);

  EXPECT_EQ(server_->disconnect(named("snapshot/1")), 2u);
  EXPECT_EQ(backend_->stats("snapshot/1").open_exports, 0) << "Export objects are destroyed";
  EXPECT_EQ(server_->count_connections(named("snapshot/1")), 0u);
  EXPECT_TRUE(snap_a->closed_by_server());
  EXPECT_TRUE(snap_b->closed_by_server());
  EXPECT_EQ(origin->command(wire::kRead, 0, 512), 0u);
  auto go = negotiating->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
  EXPECT_EQ(server_->disconnect(named("snapshot/1")), 0u);
}

TEST_F(ServerTest, ConnectionsAndStats) {
  auto c = open("origin", true);
  ASSERT_TRUE(c);
  std::string data(8192, 'z');
  ASSERT_EQ(c->command(wire::kWrite, 0, 8192, 0, data.data()), 0u);
  ASSERT_EQ(c->command(wire::kRead, 0, 4096), 0u);
  ASSERT_EQ(c->command(wire::kRead, kOriginSize, 4096), wire::kEinval);
  ServerStats s = server_->stats();
  EXPECT_EQ(s.connections_now, 1u);
  EXPECT_EQ(s.connections_total, 1u);
  EXPECT_EQ(s.requests, 3u);
  EXPECT_EQ(s.bytes_written, 8192u);
  EXPECT_EQ(s.bytes_read, 4096u);
  EXPECT_EQ(s.errors, 1u);
  auto list = server_->connections();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_TRUE(list[0].has_export);
  EXPECT_EQ(list[0].export_name, "origin");
  EXPECT_EQ(list[0].peer, "unix");
  c.reset();
  for (int i = 0; i < 200 && server_->stats().connections_now != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(server_->stats().connections_now, 0u);
}

TEST_F(ServerTest, StopIsIdempotentAndClosesEveryone) {
  auto a = open("origin");
  auto b = connect();
  ASSERT_TRUE(a && b && b->handshake());
  std::thread other([&] { server_->stop(); });
  server_->stop();
  other.join();
  server_->stop();
  EXPECT_TRUE(a->closed_by_server());
  EXPECT_TRUE(b->closed_by_server());
  EXPECT_FALSE(connect()) << "the socket file is gone";
  EXPECT_EQ(server_->stats().connections_now, 0u);
}

class EventsTest : public ServerTest {
 protected:
  EventsTest() {
    server_options_.on_connection = [this](const ConnectionEvent& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
    };
  }
  std::mutex mu_;
  std::vector<ConnectionEvent> events_;
};

TEST_F(EventsTest, OpenAndCloseAreReported) {
  {
    auto c = open("snapshot/1");
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->send_request(0, wire::kDisc, 1, 0, 0));
    EXPECT_TRUE(c->closed_by_server());
  }
  server_->stop();
  std::lock_guard lock(mu_);
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[0].kind, ConnectionEvent::Kind::kOpened);
  EXPECT_EQ(events_[0].peer, "unix");
  EXPECT_EQ(events_[1].kind, ConnectionEvent::Kind::kClosed);
  EXPECT_EQ(events_[1].id, events_[0].id);
  EXPECT_EQ(events_[1].export_name, "snapshot/1");
  EXPECT_NE(events_[1].reason.find("NBD_CMD_DISC"), std::string::npos) << events_[1].reason;
}

class LimitsTest : public ServerTest {
 protected:
  LimitsTest() {
    server_options_.max_connections = 2;
    server_options_.drain_timeout = std::chrono::milliseconds(300);
  }
};

TEST_F(LimitsTest, ClientsOverTheLimitAreClosed) {
  auto a = open("origin");
  auto b = open("origin");
  ASSERT_TRUE(a && b);
  auto c = connect();
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->closed_by_server());
  a.reset();
  for (int i = 0; i < 200 && server_->stats().connections_now > 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(open("origin"));
}

TEST_F(LimitsTest, StopDoesNotWaitForeverForAClientThatDoesNotRead) {
  auto c = open("origin");
  ASSERT_TRUE(c);
  Bytes all;
  for (int i = 0; i < 64; ++i) {
    all.u32(wire::kRequestMagic).u16(0).u16(wire::kRead).u64(i).u64(0).u32(1 << 20);
  }
  ASSERT_TRUE(c->send(all));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto start = Clock::now();
  server_->stop();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
}

// ---- With completions on other threads, late and out of order

class AsyncServerTest : public ServerTest {
 protected:
  AsyncServerTest() {
    backend_options_.completion_threads = 3;
    backend_options_.max_delay_us = 30000;
  }
};

TEST_F(AsyncServerTest, RepliesArriveOutOfOrderAndCorrect) {
  auto c = open("origin", true);
  ASSERT_TRUE(c);
  constexpr int kRequests = 40;
  for (int i = 0; i < kRequests; ++i) {
    std::string d(4096, static_cast<char>('A' + i % 26));
    ASSERT_EQ(c->command(wire::kWrite, i * 4096ull, 4096, 0, d.data()), 0u);
  }
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(c->send_request(0, wire::kRead, i, i * 4096ull, 4096));
  }
  std::vector<uint64_t> order;
  for (int i = 0; i < kRequests; ++i) {
    auto r = c->read_reply();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->chunk.type, wire::kOffsetData);
    uint64_t h = r->chunk.handle;
    order.push_back(h);
    EXPECT_EQ(be64(r->chunk.payload.data()), h * 4096);
    EXPECT_EQ(r->chunk.payload.substr(8), std::string(4096, static_cast<char>('A' + h % 26)));
  }
  EXPECT_FALSE(std::is_sorted(order.begin(), order.end())) << "completions were reordered";
}

TEST_F(AsyncServerTest, DisconnectLetsRequestsInFlightFinish) {
  auto c = open("snapshot/1");
  ASSERT_TRUE(c);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(c->send_request(0, wire::kRead, i, 0, 4096));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(server_->disconnect(named("snapshot/1")), 1u);
  EXPECT_EQ(backend_->stats("snapshot/1").open_exports, 0);
  int replies = 0;
  while (auto r = c->read_reply(4096)) {
    EXPECT_EQ(r->simple.error, 0u);
    ++replies;
  }
  EXPECT_EQ(replies, 10) << "every request read before the disconnect was answered";
}

TEST_F(AsyncServerTest, StopLetsRequestsInFlightFinish) {
  auto c = open("origin");
  ASSERT_TRUE(c);
  std::string d(4096, 'S');
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(c->send_request(wire::kFua, wire::kWrite, i, i * 4096ull, 4096, d.data()));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  server_->stop();
  int replies = 0;
  while (auto r = c->read_reply()) {
    EXPECT_EQ(r->simple.error, 0u);
    ++replies;
  }
  EXPECT_EQ(replies, 10);
  std::string back(4096, '\0');
  ASSERT_TRUE(backend_->read("origin", 9 * 4096, back.data(), back.size()).is_ok());
  EXPECT_EQ(back, d);
}

}  // namespace
}  // namespace multisnap::nbd::testing
