// Transmission commands over a raw socket: every command with good and bad
// arguments, simple and structured replies, and clients that break the
// protocol (after which other clients must still be served).
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <thread>

#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {

using TransmissionTest = ServerTest;

std::string pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + i / 251);
  return s;
}

// Both reply styles for every test that takes this parameter.
class BothReplyStyles : public ServerTest, public ::testing::WithParamInterface<bool> {
 protected:
  bool structured() const { return GetParam(); }
};

TEST_P(BothReplyStyles, WriteThenReadBack) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(8192, 'a');
  EXPECT_EQ(c->command(wire::kWrite, 12288, 8192, 0, data.data()), 0u);
  std::string back;
  EXPECT_EQ(c->command(wire::kRead, 12288, 8192, 0, nullptr, &back), 0u);
  EXPECT_EQ(back, data);
  std::string direct(8192, '\0');
  ASSERT_TRUE(backend_->read("origin", 12288, direct.data(), direct.size()).is_ok());
  EXPECT_EQ(direct, data);
}

TEST_P(BothReplyStyles, UnalignedBytesOnAByteGranularExport) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(333, 'q');
  EXPECT_EQ(c->command(wire::kWrite, 1001, 333, 0, data.data()), 0u);
  std::string back;
  EXPECT_EQ(c->command(wire::kRead, 1001, 333, 0, nullptr, &back), 0u);
  EXPECT_EQ(back, data);
}

TEST_P(BothReplyStyles, ReadPastTheEndIsEinval) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->command(wire::kRead, kOriginSize - 512, 1024), wire::kEinval);
  EXPECT_EQ(c->command(wire::kRead, kOriginSize + 4096, 512), wire::kEinval);
  EXPECT_EQ(c->command(wire::kRead, ~0ull - 100, 512), wire::kEinval) << "offset overflow";
  EXPECT_EQ(c->command(wire::kRead, kOriginSize - 512, 512), 0u);
}

TEST_P(BothReplyStyles, WritePastTheEndIsEnospcAndItsPayloadIsSkipped) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(4096, 'w');
  EXPECT_EQ(c->command(wire::kWrite, kOriginSize - 1024, 4096, 0, data.data()), wire::kEnospc);
  // The refused payload was consumed: the stream is still in step.
  EXPECT_EQ(c->command(wire::kWrite, 0, 4096, 0, data.data()), 0u);
  EXPECT_EQ(c->command(wire::kWriteZeroes, kOriginSize, 1), wire::kEnospc);
  EXPECT_EQ(c->command(wire::kTrim, kOriginSize - 1, 2), wire::kEinval);
  EXPECT_EQ(c->command(wire::kCache, kOriginSize, 4096), wire::kEinval);
}

TEST_P(BothReplyStyles, ReadOnlyExportRefusesWrites) {
  auto c = open("snapshot/1", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(4096, 'r');
  EXPECT_EQ(c->command(wire::kWrite, 0, 4096, 0, data.data()), wire::kEperm);
  EXPECT_EQ(c->command(wire::kTrim, 0, 4096), wire::kEperm);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 0, 4096), wire::kEperm);
  EXPECT_EQ(c->command(wire::kFlush, 0, 0), wire::kEinval) << "FLUSH was not advertised";
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, wire::kFua), wire::kEinval)
      << "FUA was not advertised";
  EXPECT_EQ(c->command(wire::kRead, 0, 4096), 0u);
  EXPECT_EQ(backend_->stats("snapshot/1").writes, 0u);
}

TEST_P(BothReplyStyles, MinimumBlockSizeIsEnforced) {
  auto c = open("aligned", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(1024, 'm');
  EXPECT_EQ(c->command(wire::kRead, 100, 512), wire::kEinval);
  EXPECT_EQ(c->command(wire::kRead, 512, 100), wire::kEinval);
  EXPECT_EQ(c->command(wire::kWrite, 256, 512, 0, data.data()), wire::kEinval);
  EXPECT_EQ(c->command(wire::kTrim, 0, 1000), wire::kEinval);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 1, 512), wire::kEinval);
  EXPECT_EQ(c->command(wire::kWrite, 1024, 1024, 0, data.data()), 0u);
  std::string back;
  EXPECT_EQ(c->command(wire::kRead, 1024, 1024, 0, nullptr, &back), 0u);
  EXPECT_EQ(back, data);
}

TEST_P(BothReplyStyles, MaximumBlockSizeIsEnforced) {
  auto c = open("aligned", structured());
  ASSERT_TRUE(c);
  std::string big = pattern(128 << 10, 'b');
  EXPECT_EQ(c->command(wire::kRead, 0, 128 << 10), wire::kEinval);
  EXPECT_EQ(c->command(wire::kWrite, 0, 128 << 10, 0, big.data()), wire::kEinval);
  EXPECT_EQ(c->command(wire::kWrite, 0, 64 << 10, 0, big.data()), 0u);
  // Trim and zero carry no payload and are not limited.
  EXPECT_EQ(c->command(wire::kTrim, 0, 128 << 10), 0u);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 0, 128 << 10), 0u);
}

TEST_P(BothReplyStyles, UnknownCommandsAndFlagsAreEinval) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->command(8, 0, 4096), wire::kEinval);       // NBD_CMD_RESIZE, unsupported
  EXPECT_EQ(c->command(0x1234, 0, 4096), wire::kEinval);  // unknown
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, 0x8000), wire::kEinval);
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, wire::kReqOne), wire::kEinval);
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, wire::kNoHole), wire::kEinval);
  EXPECT_EQ(c->command(wire::kTrim, 0, 4096, wire::kFastZero), wire::kEinval);
  EXPECT_EQ(c->command(wire::kFlush, 0, 4096), wire::kEinval) << "FLUSH with a length";
  EXPECT_EQ(c->command(wire::kFlush, 512, 0), wire::kEinval) << "FLUSH with an offset";
  uint32_t df = structured() ? 0u : wire::kEinval;  // DF needs structured replies
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, wire::kDf), df);
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, wire::kFua), 0u) << "FUA is valid everywhere";
  EXPECT_EQ(c->command(wire::kBlockStatus, 0, 4096), wire::kEinval) << "no meta context";
}

TEST_P(BothReplyStyles, FlushFuaTrimZeroCacheReachTheExport) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(4096, 'f');
  EXPECT_EQ(c->command(wire::kWrite, 0, 4096, wire::kFua, data.data()), 0u);
  EXPECT_EQ(c->command(wire::kFlush, 0, 0), 0u);
  EXPECT_EQ(c->command(wire::kTrim, 4096, 8192, wire::kFua), 0u);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 0, 2048, wire::kNoHole), 0u);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 65536, 65536, wire::kFastZero), 0u);
  EXPECT_EQ(c->command(wire::kCache, 0, 65536), 0u);
  MemoryExportStats s = backend_->stats("origin");
  EXPECT_EQ(s.writes, 1u);
  EXPECT_EQ(s.flushes, 1u);
  EXPECT_EQ(s.trims, 1u);
  EXPECT_EQ(s.zeroes, 2u);
  EXPECT_EQ(s.caches, 1u);
  EXPECT_EQ(s.fua_writes, 2u);
  std::string back;
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, 0, nullptr, &back), 0u);
  EXPECT_EQ(back, std::string(2048, '\0') + data.substr(2048));
}

TEST_P(BothReplyStyles, ZeroLengthRequestsSucceedWithoutTouchingTheExport) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->command(wire::kRead, 4096, 0), 0u);
  EXPECT_EQ(c->command(wire::kWrite, 4096, 0, 0, ""), 0u);
  EXPECT_EQ(c->command(wire::kTrim, kOriginSize, 0), 0u);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 0, 0), 0u);
  EXPECT_EQ(backend_->stats("origin").writes, 0u);
  EXPECT_EQ(backend_->stats("origin").reads, 0u);
}

TEST_P(BothReplyStyles, BackendErrorsMapToNbdErrors) {
  auto c = open("origin", structured());
  ASSERT_TRUE(c);
  std::string data = pattern(4096, 'e');
  backend_->inject_error("origin", 8192, 4096, Code::kIoError);
  EXPECT_EQ(c->command(wire::kRead, 8192, 4096), wire::kEio);
  EXPECT_EQ(c->command(wire::kRead, 0, 4096), 0u) << "outside the faulty range";
  backend_->inject_error("origin", 8192, 4096, Code::kNoSpace);
  EXPECT_EQ(c->command(wire::kWrite, 8192, 4096, 0, data.data()), wire::kEnospc);
  backend_->inject_error("origin", 8192, 4096, Code::kNotSupported);
  EXPECT_EQ(c->command(wire::kWriteZeroes, 8192, 4096, wire::kFastZero), wire::kEnotsup);
  backend_->inject_error("origin", 8192, 4096, Code::kReadOnly);
  EXPECT_EQ(c->command(wire::kTrim, 8192, 4096), wire::kEperm);
  backend_->inject_error("origin", 8192, 4096, Code::kCorruption);
  EXPECT_EQ(c->command(wire::kCache, 8192, 4096), wire::kEio);
  backend_->inject_error("origin", 8192, 4096, Code::kNotFound);
  EXPECT_EQ(c->command(wire::kRead, 8192, 4096), wire::kEio) << "ENOENT is not an NBD error";
  backend_->inject_error("origin", 0, 0, Code::kIoError);
  EXPECT_EQ(c->command(wire::kFlush, 0, 0), wire::kEio);
  backend_->clear_error("origin");
  EXPECT_EQ(c->command(wire::kFlush, 0, 0), 0u);
  EXPECT_GE(server_->stats().errors, 7u);
}

INSTANTIATE_TEST_SUITE_P(Replies, BothReplyStyles, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "structured" : "simple"; });

TEST_F(TransmissionTest, StructuredErrorsCarryAMessage) {
  auto c = open("origin", true);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send_request(0, wire::kRead, 9, kOriginSize, 512));
  auto r = c->read_reply();
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->structured) << "errors to READ must be structured";
  EXPECT_EQ(r->chunk.type, wire::kError);
  EXPECT_EQ(r->chunk.flags & 1, 1);
  ASSERT_GE(r->chunk.payload.size(), 6u);
  EXPECT_EQ(be32(r->chunk.payload.data()), wire::kEinval);
  uint16_t len = be16(r->chunk.payload.data() + 4);
  EXPECT_EQ(r->chunk.payload.size(), 6u + len);
  EXPECT_NE(r->chunk.payload.substr(6).find("past the end"), std::string::npos);
}

TEST_F(TransmissionTest, SimpleReadErrorHasNoPayload) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send_request(0, wire::kRead, 1, kOriginSize, 4096));
  ASSERT_TRUE(c->send_request(0, wire::kRead, 2, 0, 16));
  auto r1 = c->read_reply();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->simple.handle, 1u);
  EXPECT_EQ(r1->simple.error, wire::kEinval);
  auto r2 = c->read_reply(16);
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->simple.handle, 2u);
  EXPECT_EQ(r2->simple.error, 0u);
  EXPECT_EQ(r2->data.size(), 16u);
}

// base:allocation as reported for [offset, offset+length).
struct Descriptor {
  uint32_t length;
  uint32_t flags;
  bool operator==(const Descriptor&) const = default;
};
std::vector<Descriptor> block_status(RawClient& c, uint64_t offset, uint32_t length,
                                     uint16_t flags = 0) {
  static uint64_t handle = 1000;
  std::vector<Descriptor> out;
  if (!c.send_request(flags, wire::kBlockStatus, ++handle, offset, length)) return out;
  auto r = c.read_reply();
  if (!r || !r->structured || r->chunk.type != wire::kBlockStatusChunk) return out;
  EXPECT_EQ(r->chunk.flags & 1, 1);
  const std::string& p = r->chunk.payload;
  EXPECT_EQ((p.size() - 4) % 8, 0u);
  for (size_t i = 4; i + 8 <= p.size(); i += 8) {
    out.push_back({be32(p.data() + i), be32(p.data() + i + 4)});
  }
  return out;
}

TEST_F(TransmissionTest, BlockStatusReportsHolesAndData) {
  auto c = open("origin", true, true);
  ASSERT_TRUE(c);
  constexpr uint32_t kHoleZero = 3;
  EXPECT_EQ(block_status(*c, 0, 65536), (std::vector<Descriptor>{{65536, kHoleZero}}));
  std::string data = pattern(8192, 'x');
  ASSERT_EQ(c->command(wire::kWrite, 16384, 8192, 0, data.data()), 0u);
  EXPECT_EQ(block_status(*c, 0, 65536),
            (std::vector<Descriptor>{{16384, kHoleZero}, {8192, 0}, {40960, kHoleZero}}));
  // Starting inside the data; REQ_ONE gives one descriptor within the length.
  EXPECT_EQ(block_status(*c, 20480, 65536), (std::vector<Descriptor>{{4096, 0}, {61440, 3}}));
  EXPECT_EQ(block_status(*c, 0, 1000, wire::kReqOne), (std::vector<Descriptor>{{1000, 3}}));
  EXPECT_EQ(block_status(*c, 16384, 65536, wire::kReqOne), (std::vector<Descriptor>{{8192, 0}}));
  // Trim punches the hole again; zeroing with NO_HOLE allocates.
  ASSERT_EQ(c->command(wire::kTrim, 16384, 4096), 0u);
  ASSERT_EQ(c->command(wire::kWriteZeroes, 0, 4096, wire::kNoHole), 0u);
  EXPECT_EQ(block_status(*c, 0, 32768),
            (std::vector<Descriptor>{{4096, 0}, {16384, 3}, {4096, 0}, {8192, 3}}));
  ASSERT_EQ(c->command(wire::kWriteZeroes, 0, 4096), 0u);
  EXPECT_EQ(block_status(*c, 0, 8192), (std::vector<Descriptor>{{8192, 3}}));
  // The end of the export bounds the reply.
  EXPECT_EQ(block_status(*c, kOriginSize - 4096, 4096), (std::vector<Descriptor>{{4096, 3}}));
  EXPECT_EQ(c->command(wire::kBlockStatus, kOriginSize - 4096, 8192), wire::kEinval);
  EXPECT_EQ(c->command(wire::kBlockStatus, 0, 0), wire::kEinval);
}

TEST_F(TransmissionTest, ManyPipelinedRequestsAllGetAnswered) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  // Far more requests than the 64 a connection keeps in flight, in one go.
  constexpr int kRequests = 500;
  Bytes all;
  for (int i = 0; i < kRequests; ++i) {
    std::string data(512, static_cast<char>(i));
    all.u32(wire::kRequestMagic).u16(0).u16(wire::kWrite).u64(i).u64(i * 512ull).u32(512);
    all.str(data);
    all.u32(wire::kRequestMagic).u16(0).u16(wire::kRead).u64(100000 + i).u64(i * 512ull).u32(512);
  }
  std::thread sender([&] { ASSERT_TRUE(c->send(all)); });
  std::set<uint64_t> handles;
  for (int i = 0; i < 2 * kRequests; ++i) {
    uint8_t h[16];
    ASSERT_TRUE(c->recv_exact(h, 16));
    ASSERT_EQ(be32(h), wire::kSimpleMagic);
    ASSERT_EQ(be32(h + 4), 0u);
    uint64_t handle = be64(h + 8);
    handles.insert(handle);
    if (handle >= 100000) {
      auto data = c->recv_bytes(512);
      ASSERT_TRUE(data);
      EXPECT_EQ(*data, std::string(512, static_cast<char>(handle - 100000)));
    }
  }
  sender.join();
  EXPECT_EQ(handles.size(), 2u * kRequests);
}

TEST_F(TransmissionTest, SlowReaderStallsOnlyItself) {
  auto slow = open("origin", false);
  ASSERT_TRUE(slow);
  // 200 reads of 256 KiB: far more than the socket buffers hold, and than
  // the connection's in-flight bounds. Nobody reads the replies for now.
  Bytes all;
  for (int i = 0; i < 200; ++i) {
    all.u32(wire::kRequestMagic).u16(0).u16(wire::kRead).u64(i).u64(0).u32(256 << 10);
  }
  std::thread sender([&] { slow->send(all); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  expect_server_healthy();
  for (int i = 0; i < 200; ++i) {
    uint8_t h[16];
    ASSERT_TRUE(slow->recv_exact(h, 16));
    ASSERT_EQ(be64(h + 8), static_cast<uint64_t>(i)) << "inline completions keep order";
    ASSERT_TRUE(slow->recv_bytes(256 << 10));
  }
  sender.join();
}

TEST_F(TransmissionTest, DisconnectCommandClosesAfterReplies) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  std::string data = pattern(4096, 'd');
  ASSERT_TRUE(c->send_request(0, wire::kWrite, 1, 0, 4096, data.data()));
  ASSERT_TRUE(c->send_request(0, wire::kDisc, 2, 0, 0));
  auto r = c->read_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->simple.handle, 1u);
  EXPECT_EQ(r->simple.error, 0u);
  EXPECT_TRUE(c->closed_by_server());
  std::string back(4096, '\0');
  ASSERT_TRUE(backend_->read("origin", 0, back.data(), back.size()).is_ok());
  EXPECT_EQ(back, data);
}

TEST_F(TransmissionTest, BadRequestMagicDropsOnlyThatConnection) {
  auto other = open("origin", false);
  ASSERT_TRUE(other);
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(Bytes().u32(0x12345678).u16(0).u16(0).u64(1).u64(0).u32(512)));
  EXPECT_TRUE(c->closed_by_server());
  EXPECT_EQ(other->command(wire::kRead, 0, 512), 0u);
  expect_server_healthy();
  EXPECT_GE(server_->stats().protocol_violations, 1u);
}

TEST_F(TransmissionTest, OversizedWritePayloadDropsTheConnection) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  // A 1 GiB WRITE cannot be answered without reading the whole payload.
  ASSERT_TRUE(c->send_request(0, wire::kWrite, 1, 0, 1u << 30));
  EXPECT_TRUE(c->closed_by_server());
  expect_server_healthy();
}

TEST_F(TransmissionTest, TruncatedHeaderThenClose) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(Bytes().u32(wire::kRequestMagic).u16(0).u16(wire::kRead).u32(7)));
  c->close();
  expect_server_healthy();
}

TEST_F(TransmissionTest, DisconnectMidPayload) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  std::string half(100 << 10, 'h');
  ASSERT_TRUE(c->send_request(0, wire::kWrite, 1, 0, 200 << 10));
  ASSERT_TRUE(c->send(half.data(), half.size()));
  c->close();
  expect_server_healthy();
  EXPECT_EQ(backend_->stats("origin").writes, 0u) << "a partial write never reaches the export";
}

TEST_F(TransmissionTest, HalfClosedClientStillGetsItsReplies) {
  auto c = open("origin", false);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send_request(0, wire::kRead, 1, 0, 4096));
  ASSERT_TRUE(c->send_request(0, wire::kRead, 2, 4096, 4096));
  c->shutdown_write();
  for (uint64_t h : {1u, 2u}) {
    auto r = c->read_reply(4096);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->simple.handle, h);
  }
  EXPECT_TRUE(c->closed_by_server());
}

TEST_F(TransmissionTest, ClientThatResetsWithRequestsInFlight) {
  for (int i = 0; i < 20; ++i) {
    auto c = open("origin", i % 2 == 0);
    ASSERT_TRUE(c);
    Bytes all;
    for (int k = 0; k < 64; ++k) {
      all.u32(wire::kRequestMagic).u16(0).u16(wire::kRead).u64(k).u64(0).u32(64 << 10);
    }
    ASSERT_TRUE(c->send(all));
    c->close();
  }
  expect_server_healthy();
}

TEST_F(TransmissionTest, TcpClientsWorkToo) {
  auto c = RawClient::connect_tcp(tcp_port_);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->open("origin", true));
  std::string data = pattern(4096, 't');
  EXPECT_EQ(c->command(wire::kWrite, 0, 4096, 0, data.data()), 0u);
  std::string back;
  EXPECT_EQ(c->command(wire::kRead, 0, 4096, 0, nullptr, &back), 0u);
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace multisnap::nbd::testing
