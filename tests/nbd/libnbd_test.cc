// The server as a real client sees it: libnbd over unix and TCP sockets,
// with and without structured replies, many connections, many threads, and
// a backend that completes requests late and out of order.
#include <gtest/gtest.h>
#include <libnbd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "nbd/libnbd_handle.h"
#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {


class LibnbdTest : public ServerTest, public ::testing::WithParamInterface<bool> {
 protected:
  // Connects `h` to `name` over the unix socket, with structured replies on
  // or off as the test parameter says.
  bool connect(NbdHandle& h, const char* name, bool meta = false) {
    nbd_set_request_structured_replies(h, GetParam());
    nbd_set_export_name(h, name);
    if (meta) nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    return nbd_connect_unix(h, socket_path_.c_str()) == 0;
  }
};

TEST_P(LibnbdTest, ConnectsOverUnixAndTcp) {
  NbdHandle a;
  ASSERT_TRUE(connect(a, "origin")) << err();
  EXPECT_EQ(nbd_get_size(a), static_cast<int64_t>(kOriginSize));
  EXPECT_EQ(nbd_get_structured_replies_negotiated(a), GetParam() ? 1 : 0);
  EXPECT_EQ(nbd_is_read_only(a), 0);
  EXPECT_EQ(nbd_can_flush(a), 1);
  EXPECT_EQ(nbd_can_fua(a), 1);
  EXPECT_EQ(nbd_can_trim(a), 1);
  EXPECT_EQ(nbd_can_zero(a), 1);
  EXPECT_EQ(nbd_can_fast_zero(a), 1);
  EXPECT_EQ(nbd_can_cache(a), 1);
  EXPECT_EQ(nbd_can_multi_conn(a), 1);
  EXPECT_EQ(nbd_can_df(a), GetParam() ? 1 : 0);

  NbdHandle b;
  nbd_set_request_structured_replies(b, GetParam());
  nbd_set_export_name(b, "snapshot/1");
  ASSERT_EQ(nbd_connect_tcp(b, "127.0.0.1", std::to_string(tcp_port_).c_str()), 0) << err();
  EXPECT_EQ(nbd_is_read_only(b), 1);
  EXPECT_EQ(nbd_can_multi_conn(b), 0);
  char buf[512];
  EXPECT_EQ(nbd_pwrite(b, buf, sizeof buf, 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM);
}

TEST_P(LibnbdTest, DefaultExportHasACanonicalName) {
  NbdHandle h;
  nbd_set_full_info(h, true);
  ASSERT_TRUE(connect(h, "")) << err();
  char* name = nbd_get_canonical_export_name(h);
  ASSERT_NE(name, nullptr) << err();
  EXPECT_STREQ(name, "origin");
  free(name);
  char* description = nbd_get_export_description(h);
  ASSERT_NE(description, nullptr) << err();
  EXPECT_STREQ(description, "the origin");
  free(description);
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 1);
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 4096);
}

TEST_P(LibnbdTest, ListsExports) {
  NbdHandle h;
  nbd_set_opt_mode(h, true);
  ASSERT_TRUE(connect(h, "")) << err();
  std::vector<std::pair<std::string, std::string>> seen;
  nbd_list_callback cb = {.callback =
                              [](void* user, const char* name, const char* description) {
                                static_cast<decltype(seen)*>(user)->emplace_back(name, description);
                                return 0;
                              },
                          .user_data = &seen,
                          .free = nullptr};
  ASSERT_EQ(nbd_opt_list(h, cb), 3) << err();
  std::sort(seen.begin(), seen.end());
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], std::make_pair(std::string("aligned"), std::string("512-byte blocks")));
  EXPECT_EQ(seen[1], std::make_pair(std::string("origin"), std::string("the origin")));
  EXPECT_EQ(seen[2], std::make_pair(std::string("snapshot/1"), std::string("snapshot 1")));
  nbd_set_export_name(h, "aligned");
  ASSERT_EQ(nbd_opt_info(h), 0) << err();
  EXPECT_EQ(nbd_get_size(h), static_cast<int64_t>(kAlignedSize));
  nbd_set_export_name(h, "missing");
  EXPECT_EQ(nbd_opt_go(h), -1);
  nbd_set_export_name(h, "snapshot/1");
  ASSERT_EQ(nbd_opt_go(h), 0) << err();
  EXPECT_EQ(nbd_is_read_only(h), 1);
}

TEST_P(LibnbdTest, ReadWriteFlushTrimZeroCache) {
  NbdHandle h;
  ASSERT_TRUE(connect(h, "origin")) << err();
  std::vector<char> data(64 << 10);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 13 + 5);
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 4096, 0), 0) << err();
  ASSERT_EQ(nbd_pwrite(h, data.data(), 4096, 0, LIBNBD_CMD_FLAG_FUA), 0) << err();
  ASSERT_EQ(nbd_flush(h, 0), 0) << err();
  std::vector<char> back(data.size());
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 4096, 0), 0) << err();
  EXPECT_EQ(back, data);
  ASSERT_EQ(nbd_trim(h, 8192, 8192, 0), 0) << err();                           // [8K, 16K)
  ASSERT_EQ(nbd_zero(h, 4096, 16384, LIBNBD_CMD_FLAG_NO_HOLE), 0) << err();    // [16K, 20K)
  ASSERT_EQ(nbd_zero(h, 4096, 24576, LIBNBD_CMD_FLAG_FAST_ZERO), 0) << err();  // [24K, 28K)
  ASSERT_EQ(nbd_cache(h, 65536, 0, 0), 0) << err();
  std::vector<char> expected(data.begin(), data.begin() + 28672);  // [4K, 32K)
  std::fill(expected.begin() + 4096, expected.begin() + 16384, 0);
  std::fill(expected.begin() + 20480, expected.begin() + 24576, 0);
  back.resize(expected.size());
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 4096, 0), 0) << err();
  EXPECT_EQ(back, expected);
  EXPECT_EQ(nbd_pread(h, back.data(), 4096, kOriginSize - 2048, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  ASSERT_EQ(nbd_pread(h, back.data(), 16, 0, 0), 0) << "the connection survives the error";
  EXPECT_EQ(nbd_shutdown(h, 0), 0) << err();
}

struct Extent {
  uint32_t length;
  uint32_t flags;
  bool operator==(const Extent&) const = default;
};

std::vector<Extent> map(nbd_handle* h, uint64_t offset, uint64_t count, uint32_t flags = 0) {
  std::vector<Extent> out;
  nbd_extent_callback cb = {
      .callback =
          [](void* user, const char* context, uint64_t, uint32_t* entries, size_t n, int*) {
            if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
            auto* v = static_cast<std::vector<Extent>*>(user);
            for (size_t i = 0; i + 1 < n; i += 2) v->push_back({entries[i], entries[i + 1]});
            return 0;
          },
      .user_data = &out,
      .free = nullptr};
  if (nbd_block_status(h, count, offset, cb, flags) != 0) ADD_FAILURE() << err();
  return out;
}

TEST_P(LibnbdTest, BlockStatusBaseAllocation) {
  NbdHandle h;
  ASSERT_TRUE(connect(h, "origin", true)) << err();
  if (!GetParam()) {
    EXPECT_EQ(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 0)
        << "meta contexts need structured replies";
    return;
  }
  ASSERT_EQ(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  constexpr uint32_t kHole = LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO;
  EXPECT_EQ(map(h, 0, 1 << 20), (std::vector<Extent>{{1 << 20, kHole}}));
  std::vector<char> data(8192, 'x');
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 65536, 0), 0);
  EXPECT_EQ(map(h, 0, 1 << 20),
            (std::vector<Extent>{{65536, kHole}, {8192, 0}, {(1 << 20) - 65536 - 8192, kHole}}));
  EXPECT_EQ(map(h, 65536 + 4096, 100, LIBNBD_CMD_FLAG_REQ_ONE), (std::vector<Extent>{{100, 0}}));
}

TEST_P(LibnbdTest, BlockStatusOfSeveralContexts) {
  NbdHandle h;
  nbd_add_meta_context(h, "memory:stripes:4096");
  nbd_add_meta_context(h, "memory:stripes:0");  // no such context
  nbd_add_meta_context(h, "memory:stripes:016384");
  ASSERT_TRUE(connect(h, "origin", true)) << err();
  if (!GetParam()) return;
  EXPECT_EQ(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  EXPECT_EQ(nbd_can_meta_context(h, "memory:stripes:4096"), 1);
  EXPECT_EQ(nbd_can_meta_context(h, "memory:stripes:0"), 0);
  EXPECT_EQ(nbd_can_meta_context(h, "memory:stripes:016384"), 1) << "named as asked";
  using Map = std::map<std::string, std::vector<Extent>>;
  Map seen;
  nbd_extent_callback cb = {
      .callback =
          [](void* user, const char* context, uint64_t, uint32_t* entries, size_t n, int*) {
            auto& v = (*static_cast<Map*>(user))[context];
            for (size_t i = 0; i + 1 < n; i += 2) v.push_back({entries[i], entries[i + 1]});
            return 0;
          },
      .user_data = &seen,
      .free = nullptr};
  ASSERT_EQ(nbd_block_status(h, 16384, 8192, cb, 0), 0) << err();
  constexpr uint32_t kHole = LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO;
  EXPECT_EQ(seen, (Map{{"base:allocation", {{16384, kHole}}},
                       {"memory:stripes:4096", {{4096, 0}, {4096, 1}, {4096, 0}, {4096, 1}}},
                       {"memory:stripes:016384", {{8192, 0}, {8192, 1}}}}));
  seen.clear();
  ASSERT_EQ(nbd_block_status(h, 16384, 8192, cb, LIBNBD_CMD_FLAG_REQ_ONE), 0) << err();
  EXPECT_EQ(seen, (Map{{"base:allocation", {{16384, kHole}}},
                       {"memory:stripes:4096", {{4096, 0}}},
                       {"memory:stripes:016384", {{8192, 0}}}}));
}

TEST_P(LibnbdTest, AlignedExportRejectsMisalignedRequests) {
  NbdHandle h;
  nbd_set_strict_mode(h, 0);  // let libnbd send what we ask for
  ASSERT_TRUE(connect(h, "aligned")) << err();
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 512);
  EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 65536);
  char buf[1024] = {};
  EXPECT_EQ(nbd_pread(h, buf, 100, 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  EXPECT_EQ(nbd_pwrite(h, buf, 512, 256, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  EXPECT_EQ(nbd_pwrite(h, buf, 1024, 512, 0), 0) << err();
}

INSTANTIATE_TEST_SUITE_P(Replies, LibnbdTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "structured" : "simple"; });

// Many connections at once, each writing its own region then checking it.
TEST_F(ServerTest, ManyConcurrentConnections) {
  constexpr int kClients = 24;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      NbdHandle h;
      nbd_set_export_name(h, "origin");
      if (nbd_connect_unix(h, socket_path_.c_str()) != 0) return (void)++failures;
      uint64_t region = kOriginSize / kClients / 4096 * 4096;
      std::vector<char> data(region, static_cast<char>(t + 1));
      std::vector<char> back(region);
      for (int round = 0; round < 5; ++round) {
        if (nbd_pwrite(h, data.data(), region, t * region, 0) != 0 ||
            nbd_pread(h, back.data(), region, t * region, 0) != 0 || back != data) {
          ++failures;
        }
      }
      nbd_shutdown(h, 0);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server_->stats().connections_total, static_cast<uint64_t>(kClients));
}

// Several threads, each with its own connection and many requests in
// flight, against a backend completing late and out of order. Each thread
// owns a stripe of blocks and keeps a model of it; everything read must
// match the model.
class StressTest : public ServerTest {
 protected:
  StressTest() {
    backend_options_.completion_threads = 3;
    backend_options_.max_delay_us = 200;
    server_options_.max_requests_per_connection = 16;  // exercise the bound
  }
};

struct Pending {
  int64_t cookie;
  uint64_t block;
  bool is_read;
  std::vector<char> buf;
};

void stress_client(const std::string& socket, int id, int threads, std::atomic<int>* failures) {
  constexpr uint64_t kBlock = 4096;
  constexpr int kOps = 600;
  constexpr int kDepth = 24;
  NbdHandle h;
  nbd_set_export_name(h, "origin");
  if (nbd_connect_unix(h, socket.c_str()) != 0) return (void)++*failures;
  uint64_t blocks = kOriginSize / kBlock;
  std::vector<char> model(blocks, 0);  // fill byte per block; 0 = never written
  std::mt19937 rng(id * 7919 + 1);
  std::vector<std::unique_ptr<Pending>> inflight;
  auto reap = [&](bool all) {
    while (!inflight.empty() && (all || inflight.size() >= kDepth)) {
      if (nbd_poll(h, -1) < 0) return false;
      for (size_t i = 0; i < inflight.size();) {
        Pending& p = *inflight[i];
        int done = nbd_aio_command_completed(h, p.cookie);
        if (done == 0) {
          ++i;
          continue;
        }
        if (done < 0) return false;
        if (p.is_read && p.buf != std::vector<char>(kBlock, model[p.block])) return false;
        inflight.erase(inflight.begin() + i);
      }
    }
    return true;
  };
  for (int op = 0; op < kOps; ++op) {
    // Blocks id, id+threads, ...: no two threads touch the same block, and a
    // block is never read and written while both are in flight.
    uint64_t block = (rng() % (blocks / threads)) * threads + id;
    bool busy = false;
    for (auto& p : inflight) busy |= p->block == block;
    if (busy && !reap(true)) return (void)++*failures;
    auto p = std::make_unique<Pending>();
    p->block = block;
    p->is_read = rng() % 2 == 0;
    if (p->is_read) {
      p->buf.resize(kBlock);
      p->cookie = nbd_aio_pread(h, p->buf.data(), kBlock, block * kBlock, NBD_NULL_COMPLETION, 0);
    } else {
      char fill = static_cast<char>(1 + rng() % 250);
      model[block] = fill;
      p->buf.assign(kBlock, fill);
      p->cookie = nbd_aio_pwrite(h, p->buf.data(), kBlock, block * kBlock, NBD_NULL_COMPLETION,
                                 op % 16 == 0 ? LIBNBD_CMD_FLAG_FUA : 0);
    }
    if (p->cookie < 0) return (void)++*failures;
    inflight.push_back(std::move(p));
    if (!reap(false)) return (void)++*failures;
  }
  if (!reap(true) || nbd_flush(h, 0) != 0) return (void)++*failures;
  std::vector<char> all(kOriginSize);
  if (nbd_pread(h, all.data(), all.size(), 0, 0) != 0) return (void)++*failures;
  for (uint64_t b = id; b < blocks; b += threads) {
    if (std::vector<char>(all.begin() + b * kBlock, all.begin() + (b + 1) * kBlock) !=
        std::vector<char>(kBlock, model[b])) {
      return (void)++*failures;
    }
  }
  nbd_shutdown(h, 0);
}

TEST_F(StressTest, ParallelClientsWithOutOfOrderCompletions) {
  constexpr int kThreads = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(stress_client, socket_path_, t, kThreads, &failures);
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0) << err();
  EXPECT_EQ(server_->stats().errors, 0u);
}

}  // namespace
}  // namespace multisnap::nbd::testing
