// Transports other than a plain accepted socket: TLS (PSK made here) with
// libnbd, replies larger than the socket buffer while the client is not
// reading (the TLS send path that must finish a record first), wrong keys,
// plain clients against `require`, the handshake deadline over STARTTLS;
// listening sockets handed over (socket activation) and a client served on
// an already connected socket (stdio).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "nbd/libnbd_handle.h"
#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {


// A psktool-style file with one random key for `user`.
void write_psk(const std::string& path, const std::string& user, uint32_t seed) {
  std::mt19937 rng(seed);
  std::ofstream out(path);
  out << user << ':';
  for (int i = 0; i < 32; ++i) out << fmt::format("{:02x}", rng() & 0xff);
  out << '\n';
  out.close();
  chmod(path.c_str(), 0600);
}

class TlsTest : public ServerTest {
 protected:
  TlsTest() {
    psk_ = dir_.path() + "/keys.psk";
    write_psk(psk_, "alice", 1);
    wrong_psk_ = dir_.path() + "/wrong.psk";
    write_psk(wrong_psk_, "alice", 2);
    server_options_.tls = TlsMode::kRequire;
    server_options_.tls_credentials.psk_file = psk_;
    server_options_.handshake_timeout = std::chrono::milliseconds(500);
  }

  bool connect_tls(NbdHandle& h, const std::string& psk, const char* user = "alice") {
    nbd_set_tls(h, LIBNBD_TLS_REQUIRE);
    nbd_set_tls_psk_file(h, psk.c_str());
    nbd_set_tls_username(h, user);
    nbd_set_export_name(h, "origin");
    return nbd_connect_unix(h, socket_path_.c_str()) == 0;
  }

  std::string psk_, wrong_psk_;
};

TEST_F(TlsTest, ClientsReadAndWriteThroughTls) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  constexpr int kClients = 4;
  constexpr size_t kRegion = kOriginSize / kClients;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      NbdHandle h;
      if (!connect_tls(h, psk_)) {
        ADD_FAILURE() << err();
        ++failures;
        return;
      }
      EXPECT_EQ(nbd_get_tls_negotiated(h), 1);
      std::vector<char> data(kRegion, static_cast<char>('a' + i)), back(kRegion);
      EXPECT_EQ(nbd_pwrite(h, data.data(), kRegion, i * kRegion, 0), 0) << err();
      EXPECT_EQ(nbd_pread(h, back.data(), kRegion, i * kRegion, 0), 0) << err();
      if (back != data) ++failures;
      nbd_shutdown(h, 0);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server_->stats().tls_handshake_failures, 0u);
}

// Sixteen 1 MiB reads in flight while the client does not read: the server
// runs into EAGAIN in the middle of TLS records and must resume each one
// with the same bytes, or the stream is corrupt.
TEST_F(TlsTest, LargeRepliesToAClientThatIsNotReading) {
  NbdHandle h;
  ASSERT_TRUE(connect_tls(h, psk_)) << err();
  std::vector<char> data(kOriginSize);
  std::mt19937 rng(7);
  for (char& c : data) c = static_cast<char>(rng());
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 0, 0), 0) << err();
  constexpr int kReads = 16;
  std::vector<std::vector<char>> bufs(kReads, std::vector<char>(kOriginSize));
  std::vector<int64_t> cookies;
  for (auto& b : bufs) {
    int64_t c = nbd_aio_pread(h, b.data(), b.size(), 0, NBD_NULL_COMPLETION, 0);
    ASSERT_GE(c, 0) << err();
    cookies.push_back(c);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the server fills the socket
  for (int64_t c : cookies) {
    while (nbd_aio_command_completed(h, c) == 0) ASSERT_GE(nbd_poll(h, 5000), 0) << err();
  }
  for (auto& b : bufs) EXPECT_TRUE(b == data);
}

TEST_F(TlsTest, WrongKeyFailsAndOtherClientsGoOn) {
  NbdHandle good;
  ASSERT_TRUE(connect_tls(good, psk_)) << err();
  NbdHandle wrong_key, wrong_user;
  EXPECT_FALSE(connect_tls(wrong_key, wrong_psk_));
  EXPECT_FALSE(connect_tls(wrong_user, psk_, "mallory"));
  char buf[4096];
  EXPECT_EQ(nbd_pread(good, buf, sizeof buf, 0, 0), 0) << err();
  for (int i = 0; i < 100 && server_->stats().tls_handshake_failures < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->stats().tls_handshake_failures, 2u);
  EXPECT_EQ(server_->stats().protocol_violations, 0u);
}

TEST_F(TlsTest, PlainClientsAreRefusedWithTlsRequired) {
  NbdHandle h;
  nbd_set_tls(h, LIBNBD_TLS_DISABLE);
  nbd_set_export_name(h, "origin");
  EXPECT_EQ(nbd_connect_unix(h, socket_path_.c_str()), -1);
  // A raw client sees NBD_REP_ERR_TLS_REQD for GO.
  auto c = connect();
  ASSERT_TRUE(c && c->handshake());
  auto info = c->info(wire::kGo, "origin");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->final_type, 0x80000005u);  // NBD_REP_ERR_TLS_REQD
  EXPECT_EQ(server_->stats().protocol_violations, 0u);
}

TEST_F(TlsTest, TheHandshakeDeadlineCoversTheTlsHandshake) {
  auto c = connect();
  ASSERT_TRUE(c && c->handshake());
  ASSERT_TRUE(c->send_option(wire::kStartTls));
  auto ack = c->read_option_reply();
  ASSERT_TRUE(ack);
  EXPECT_EQ(ack->type, wire::kAck);
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(c->closed_by_server());  // nothing sent: no TLS ClientHello
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds(3));
  EXPECT_EQ(server_->stats().handshake_timeouts, 1u);
}

TEST_F(TlsTest, PlaintextBehindStartTlsDropsTheConnection) {
  auto c = connect();
  ASSERT_TRUE(c && c->handshake());
  Bytes both;
  both.u64(wire::kIHaveOpt).u32(wire::kStartTls).u32(0);
  both.u64(wire::kIHaveOpt).u32(wire::kList).u32(0);
  ASSERT_TRUE(c->send(both));
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(server_->stats().protocol_violations, 1u);
}

// ---- Sockets handed over, and a client on a connected socket

TEST(HandedOverSocketsTest, ListenerFromSystemdAndStream) {
  set_log_level(LogLevel::kWarn);
  TempDir dir;
  MemoryBackend backend;
  add_standard_exports(backend);
  std::string path = dir.path() + "/activated.sock";
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(lfd, 16), 0);

  std::atomic<int> closed{0};
  ServerOptions options;
  options.listen_fds = {lfd};
  options.on_connection = [&](const ConnectionEvent& e) {
    if (e.kind == ConnectionEvent::Kind::kClosed) ++closed;
  };
  auto server = Server::start(backend, options);
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  ASSERT_EQ((*server)->addresses(), std::vector<std::string>{"unix:" + path});
  {
    NbdHandle h;
    ASSERT_EQ(nbd_connect_unix(h, path.c_str()), 0) << err();
    EXPECT_EQ(nbd_get_size(h), static_cast<int64_t>(kOriginSize));
  }
  // A client already connected: one end of a socket pair.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto id = (*server)->serve_stream(sv[0], fcntl(sv[0], F_DUPFD_CLOEXEC, 3));
  ASSERT_TRUE(id.is_ok()) << id.status().to_string();
  {
    NbdHandle h;
    ASSERT_EQ(nbd_connect_socket(h, sv[1]), 0) << err();
    char buf[512] = {1};
    EXPECT_EQ(nbd_pwrite(h, buf, sizeof buf, 0, 0), 0) << err();
    nbd_shutdown(h, 0);
  }
  for (int i = 0; i < 200 && closed < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(closed.load(), 2);
  (*server)->stop();
  EXPECT_EQ(access(path.c_str(), F_OK), 0) << "the server removed a socket file it did not make";
  EXPECT_EQ(fcntl(lfd, F_GETFD), -1) << "the handed-over socket is still open after stop()";
}

TEST(HandedOverSocketsTest, NotAListeningSocketIsRefused) {
  MemoryBackend backend;
  add_standard_exports(backend);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ServerOptions options;
  options.listen_fds = {fd};
  auto server = Server::start(backend, options);
  ASSERT_FALSE(server.is_ok());
  EXPECT_NE(server.status().message().find("not a listening"), std::string::npos) << server.status().to_string();
}

}  // namespace
}  // namespace multisnap::nbd::testing
