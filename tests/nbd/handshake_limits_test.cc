// Clients that do not finish the handshake: the handshake deadline, the cap
// on connections still negotiating, and that neither touches clients that
// did finish. Every timing check has a lower bound (nothing is dropped
// before its deadline) and an upper one (it is dropped soon after).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Slack for a loaded 2-core machine or a sanitizer build, on top of a deadline.
constexpr milliseconds kLateness{2000};

// A socket that connects and then sends nothing, unlike RawClient, so that
// hundreds can be checked without blocking.
class IdleSocket {
 public:
  static IdleSocket unix_socket(const std::string& path) {
    IdleSocket s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (connect(s.fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) s.reset();
    return s;
  }
  static IdleSocket tcp_socket(uint16_t port) {
    IdleSocket s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s.fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) s.reset();
    return s;
  }
  IdleSocket(IdleSocket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  ~IdleSocket() { reset(); }

  bool connected() const { return fd_ >= 0; }
  // Whether the server has closed it (the greeting and anything else it
  // sent is read and dropped); never blocks.
  bool closed_by_server() {
    char buf[256];
    for (;;) {
      ssize_t n = recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) continue;
      if (n == 0) return true;
      if (errno == EINTR) continue;
      return errno == ECONNRESET;
    }
  }

 private:
  explicit IdleSocket(int fd) : fd_(fd) {}
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd_;
};

int thread_count() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("Threads:")) return std::stoi(line.substr(8));
  }
  return -1;
}

// Polls `done` every 5 ms until it holds or `limit` has passed.
bool eventually(const std::function<bool()>& done, milliseconds limit = kLateness) {
  auto end = Clock::now() + limit;
  for (;;) {
    if (done()) return true;
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
}

// The client flags and an NBD_OPT_GO for `name`, as one byte string.
Bytes flags_and_go(std::string_view name) {
  Bytes b;
  b.u32(3);  // FIXED_NEWSTYLE | NO_ZEROES
  b.u64(wire::kIHaveOpt).u32(wire::kGo).u32(static_cast<uint32_t>(4 + name.size() + 2));
  b.u32(static_cast<uint32_t>(name.size())).str(name).u16(0);
  return b;
}

// Reads the replies to a GO up to the final one; true if it is ACK.
bool go_acknowledged(RawClient& c) {
  for (;;) {
    auto r = c.read_option_reply();
    if (!r || r->option != wire::kGo) return false;
    if (r->type != wire::kInfoReply) return r->type == wire::kAck;
  }
}

// ---- The handshake deadline

class DeadlineTest : public ServerTest {
 protected:
  static constexpr milliseconds kDeadline{300};
  DeadlineTest() { server_options_.handshake_timeout = kDeadline; }
};

TEST_F(DeadlineTest, SilentClientIsDroppedAtTheDeadline) {
  auto start = Clock::now();
  auto c = connect();
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->read_greeting()) << "the server greets at once";
  ASSERT_TRUE(c->closed_by_server()) << "still open after the raw client's 10 s timeout";
  auto waited = Clock::now() - start;
  EXPECT_GE(waited, kDeadline) << "dropped before its deadline";
  EXPECT_LT(waited, kDeadline + kLateness) << "dropped long after its deadline";
  EXPECT_TRUE(eventually([&] { return server_->stats().connections_now == 0; }));
  ServerStats s = server_->stats();
  EXPECT_EQ(s.handshake_timeouts, 1u);
  EXPECT_EQ(s.connections_negotiating, 0u);
  EXPECT_EQ(s.protocol_violations, 0u) << "a timeout is not a protocol violation";
  expect_server_healthy();
}

TEST_F(DeadlineTest, ClientThatTricklesBytesIsDroppedAtTheDeadlineToo) {
  // One byte every 20 ms, forever: each read makes progress, but the
  // deadline covers the whole handshake, not the gaps between reads.
  Bytes stream;
  stream.u32(3);
  for (int i = 0; i < 100; ++i) stream.u64(wire::kIHaveOpt).u32(wire::kList).u32(0);
  auto start = Clock::now();
  auto c = connect();
  ASSERT_TRUE(c);
  size_t sent = 0;
  while (sent < stream.size() && c->send(stream.data().data() + sent, 1)) {
    ++sent;
    std::this_thread::sleep_for(milliseconds(20));
  }
  auto waited = Clock::now() - start;
  ASSERT_LT(sent, stream.size()) << "the server never dropped the trickling client";
  EXPECT_GE(waited, kDeadline);
  EXPECT_LT(waited, kDeadline + kLateness);
  EXPECT_TRUE(eventually([&] { return server_->stats().handshake_timeouts == 1; }));
  expect_server_healthy();
}

class SlowHandshakeTest : public ServerTest {
 protected:
  static constexpr milliseconds kDeadline{800};
  SlowHandshakeTest() { server_options_.handshake_timeout = kDeadline; }
};

TEST_F(SlowHandshakeTest, SlowHandshakeThatFinishesInTimeWorks) {
  // Flags and GO one byte at a time, 10 ms apart: about 320 ms of an 800 ms
  // deadline (room for a loaded machine). It must be served, and stay served
  // past the deadline.
  auto start = Clock::now();
  auto c = connect();
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->read_greeting());
  Bytes go = flags_and_go("origin");
  for (size_t i = 0; i < go.size(); ++i) {
    ASSERT_TRUE(c->send(go.data().data() + i, 1)) << "dropped after " << i << " bytes";
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_TRUE(go_acknowledged(*c));
  ASSERT_LT(Clock::now() - start, kDeadline) << "too slow to test anything; machine overloaded?";
  std::this_thread::sleep_until(start + kDeadline + milliseconds(300));
  std::string data;
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, 0, nullptr, &data), 0u);
  EXPECT_EQ(data.size(), 4096u);
  EXPECT_EQ(server_->stats().handshake_timeouts, 0u);
}

TEST_F(DeadlineTest, EstablishedClientsAreNeverDroppedByTheDeadline) {
  auto simple = open("origin");
  auto structured = open("snapshot/1", true, true);
  ASSERT_TRUE(simple && structured);
  std::this_thread::sleep_for(3 * kDeadline);  // idle well past the deadline
  std::string data(4096, 'd');
  EXPECT_EQ(simple->command(wire::kWrite, 0, 4096, 0, data.data()), 0u);
  EXPECT_EQ(structured->command(wire::kRead, 0, 4096), 0u);
  ServerStats s = server_->stats();
  EXPECT_EQ(s.handshake_timeouts, 0u);
  EXPECT_EQ(s.connections_now, 2u);
  EXPECT_EQ(s.connections_negotiating, 0u);
}

TEST(DeadlineOptionsTest, BadLimitsAreRefused) {
  MemoryBackend backend;
  TempDir dir;
  ServerOptions o;
  o.listen = {"unix:" + dir.path() + "/s"};
  o.max_negotiating = 0;
  EXPECT_EQ(Server::start(backend, o).status().code(), Code::kInvalidArgument);
  o.max_negotiating = 1;
  o.handshake_timeout = milliseconds(-1);
  EXPECT_EQ(Server::start(backend, o).status().code(), Code::kInvalidArgument);
  o.handshake_timeout = milliseconds(0);  // no deadline
  EXPECT_TRUE(Server::start(backend, o).is_ok());
}

// ---- Connections still negotiating, counted apart

class NegotiatingCapTest : public ServerTest {
 protected:
  static constexpr uint32_t kMaxNegotiating = 16;
  static constexpr uint32_t kMaxConnections = 4;
  // The default 10 s deadline: these tests show the cap alone protects.
  NegotiatingCapTest() {
    server_options_.max_negotiating = kMaxNegotiating;
    server_options_.max_connections = kMaxConnections;
  }
};

TEST_F(NegotiatingCapTest, FloodOfIdleConnectionsCannotLockOutRealClients) {
  int threads_before = thread_count();
  auto established = open("origin", true);
  ASSERT_TRUE(established);

  // Many more idle connections than max_connections, over both listeners.
  constexpr int kFlood = 320;
  std::vector<IdleSocket> flood;
  for (int i = 0; i < kFlood; ++i) {
    flood.push_back(i % 2 ? IdleSocket::tcp_socket(tcp_port_) : IdleSocket::unix_socket(socket_path_));
    ASSERT_TRUE(flood.back().connected()) << "connection " << i;
  }
  // Let them all be accepted: the flood sits there.
  ASSERT_TRUE(eventually([&] { return server_->stats().connections_total == kFlood + 1; }));

  // A real client gets in at once and works, over each listener and with libnbd.
  auto start = Clock::now();
  auto raw = open("snapshot/1");
  ASSERT_TRUE(raw) << "a real client was locked out by idle connections";
  EXPECT_EQ(raw->command(wire::kRead, 0, 4096), 0u);
  nbd_handle* h = nbd_create();
  ASSERT_NE(h, nullptr);
  nbd_set_export_name(h, "origin");
  ASSERT_EQ(nbd_connect_tcp(h, "127.0.0.1", std::to_string(tcp_port_).c_str()), 0)
      << nbd_get_error();
  char buf[4096] = {1};
  EXPECT_EQ(nbd_pwrite(h, buf, sizeof buf, 8192, 0), 0) << nbd_get_error();
  EXPECT_EQ(nbd_pread(h, buf, sizeof buf, 8192, 0), 0) << nbd_get_error();
  EXPECT_LT(Clock::now() - start, kLateness) << "real clients had to wait";

  // The established client was never disturbed.
  std::string data;
  EXPECT_EQ(established->command(wire::kRead, 8192, 4096, 0, nullptr, &data), 0u);

  // The flood pushed itself out: every dropped connection is one of its own
  // and is really closed, and at most kMaxNegotiating of it are left.
  std::vector<bool> is_closed(kFlood, false);
  uint64_t closed = 0;
  EXPECT_TRUE(eventually([&] {
    for (int i = 0; i < kFlood; ++i) {
      if (!is_closed[i] && flood[i].closed_by_server()) {
        is_closed[i] = true;
        ++closed;
      }
    }
    return closed == server_->stats().handshakes_evicted;
  })) << closed << " of " << kFlood << " idle connections closed";
  ServerStats s = server_->stats();
  EXPECT_GE(closed, kFlood - kMaxNegotiating);
  EXPECT_EQ(s.connections_negotiating, kFlood - closed) << "the rest still negotiate";
  EXPECT_LE(s.connections_negotiating, kMaxNegotiating);
  EXPECT_EQ(s.connections_refused, 0u);
  EXPECT_EQ(s.handshake_timeouts, 0u);
  // And so are their threads: one per negotiating or established connection.
  int allowed = threads_before + static_cast<int>(kMaxNegotiating) + 3;
  EXPECT_TRUE(eventually([&] { return thread_count() <= allowed; }))
      << thread_count() << " threads, expected at most " << allowed;

  EXPECT_EQ(nbd_shutdown(h, 0), 0);
  nbd_close(h);
}

class TinyCapTest : public ServerTest {
 protected:
  TinyCapTest() {
    server_options_.max_negotiating = 2;
    server_options_.max_connections = 1;
  }
};

TEST_F(TinyCapTest, TheOldestHandshakeMakesRoom) {
  auto first = connect();
  ASSERT_TRUE(first && first->read_greeting());
  auto second = connect();
  ASSERT_TRUE(second && second->read_greeting());
  auto third = connect();
  ASSERT_TRUE(third && third->read_greeting());  // accepted, so the oldest was dropped
  EXPECT_TRUE(first->closed_by_server());
  EXPECT_EQ(server_->stats().handshakes_evicted, 1u);
  Bytes go = flags_and_go("origin");
  ASSERT_TRUE(second->send(go));
  EXPECT_TRUE(go_acknowledged(*second)) << "the newer handshake was kept";
  EXPECT_EQ(second->command(wire::kRead, 0, 512), 0u);
}

TEST_F(TinyCapTest, ASilentHandshakeMakesRoomBeforeATalkingOne) {
  auto talker = connect();
  ASSERT_TRUE(talker && talker->handshake());
  ASSERT_TRUE(talker->send_option(wire::kList));  // its reply proves the server heard it
  for (;;) {
    auto r = talker->read_option_reply();
    ASSERT_TRUE(r);
    if (r->type == wire::kAck) break;
  }
  auto silent = connect();
  ASSERT_TRUE(silent && silent->read_greeting());
  auto newest = connect();
  ASSERT_TRUE(newest && newest->read_greeting());
  EXPECT_TRUE(silent->closed_by_server()) << "the silent one goes first, though younger";
  auto go = talker->info(wire::kGo, "origin");
  ASSERT_TRUE(go) << "the oldest, talking, handshake was dropped";
  EXPECT_EQ(go->final_type, wire::kAck);
  EXPECT_EQ(talker->command(wire::kRead, 0, 512), 0u);
}

TEST_F(TinyCapTest, HandshakeFinishingAtTheLimitIsRefused) {
  auto late = connect();
  ASSERT_TRUE(late && late->read_greeting());
  auto first = open("origin");  // takes the only established slot
  ASSERT_TRUE(first);
  ASSERT_TRUE(late->send(flags_and_go("origin")));
  EXPECT_FALSE(go_acknowledged(*late)) << "got a second established connection";
  EXPECT_TRUE(late->closed_by_server());
  EXPECT_EQ(server_->stats().connections_refused, 1u);
  EXPECT_EQ(first->command(wire::kRead, 0, 512), 0u);
  first.reset();
  EXPECT_TRUE(eventually([&] { return server_->stats().connections_now == 0; }));
  EXPECT_TRUE(open("origin")) << "the slot is free again";
}

}  // namespace
}  // namespace multisnap::nbd::testing
