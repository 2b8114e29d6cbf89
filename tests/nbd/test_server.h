// A running Server over a MemoryBackend, in a temporary directory, for the
// NBD tests. Exports:
//   "origin"      1 MiB, writable, the default export ("")
//   "snapshot/1"  1 MiB, read-only
//   "aligned"     256 KiB, min_block 512, max_block 64 KiB
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "support/memory_backend.h"
#include "nbd/raw_client.h"
#include "nbd/server.h"
#include "util/log.h"

namespace multisnap::nbd::testing {

inline constexpr uint64_t kOriginSize = 1 << 20;
inline constexpr uint64_t kSnapshotSize = 1 << 20;
inline constexpr uint64_t kAlignedSize = 256 << 10;

// A fresh temporary directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/msnbd.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void add_standard_exports(MemoryBackend& backend) {
  ASSERT_TRUE(backend
                  .add_export({.name = "origin",
                               .description = "the origin",
                               .size = kOriginSize,
                               .can_multi_conn = true})
                  .is_ok());
  ASSERT_TRUE(backend
                  .add_export({.name = "snapshot/1",
                               .description = "snapshot 1",
                               .size = kSnapshotSize,
                               .read_only = true})
                  .is_ok());
  ASSERT_TRUE(backend
                  .add_export({.name = "aligned",
                               .description = "512-byte blocks",
                               .size = kAlignedSize,
                               .min_block = 512,
                               .max_block = 64 << 10})
                  .is_ok());
  backend.set_default_export("origin");
}

class ServerTest : public ::testing::Test {
 protected:
  // Subclasses may change these before SetUp() runs (in their constructor).
  MemoryBackendOptions backend_options_;
  ServerOptions server_options_;

  void SetUp() override {
    set_log_level(LogLevel::kWarn);
    backend_ = std::make_unique<MemoryBackend>(backend_options_);
    add_standard_exports(*backend_);
    socket_path_ = dir_.path() + "/nbd.sock";
    server_options_.listen = {"unix:" + socket_path_, "tcp:127.0.0.1:0"};
    auto server = Server::start(*backend_, server_options_);
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    server_ = std::move(server).value();
    for (const ListenAddress& a : server_->listen_addresses()) {
      if (a.kind == ListenAddress::Kind::kTcp) tcp_port_ = a.port;
    }
    ASSERT_NE(tcp_port_, 0);
  }

  void TearDown() override {
    if (server_) server_->stop();
    server_.reset();
    backend_.reset();
  }

  std::unique_ptr<RawClient> connect() { return RawClient::connect_unix(socket_path_); }

  // A raw client in the transmission phase on `name`.
  std::unique_ptr<RawClient> open(std::string_view name, bool structured = false,
                                  bool meta = false) {
    auto c = connect();
    if (!c || !c->open(name, structured, meta)) return nullptr;
    return c;
  }

  // A fresh client can still use the server: the check after every test
  // that misbehaves on purpose.
  void expect_server_healthy() {
    auto c = open("origin");
    ASSERT_TRUE(c) << "a well-behaved client could not connect";
    std::string data;
    EXPECT_EQ(c->command(wire::kRead, 0, 4096, 0, nullptr, &data), 0u);
    EXPECT_EQ(data.size(), 4096u);
  }

  TempDir dir_;
  std::string socket_path_;
  uint16_t tcp_port_ = 0;
  std::unique_ptr<MemoryBackend> backend_;
  std::unique_ptr<Server> server_;
};

}  // namespace multisnap::nbd::testing
