// Transmission without sockets, against a scripted Export whose completions
// the test triggers by hand: reply order, in-flight bounds, and how block
// status from the Export and from other meta contexts is turned into
// descriptors and chunks.
#include <gtest/gtest.h>
#include <sys/uio.h>

#include <cstring>
#include <deque>
#include <functional>
#include <optional>

#include "nbd/raw_client.h"
#include "nbd/transmission.h"

namespace multisnap::nbd::testing {
namespace {

constexpr uint64_t kSize = 1 << 20;

// Queues every request; the test completes them when and how it likes.
class ScriptedExport final : public Export {
 public:
  ScriptedExport() {
    info_.name = "scripted";
    info_.size = kSize;
  }
  const ExportInfo& info() const override { return info_; }
  void read(uint64_t, uint32_t length, uint8_t* buf, Done done) override {
    std::memset(buf, 'r', length);
    pending.push_back(std::move(done));
  }
  void write(uint64_t, uint32_t, const uint8_t*, bool, Done done) override {
    pending.push_back(std::move(done));
  }
  void flush(Done done) override { pending.push_back(std::move(done)); }
  void trim(uint64_t, uint64_t, bool, Done done) override { pending.push_back(std::move(done)); }
  void write_zeroes(uint64_t, uint64_t, bool, bool, bool, Done done) override {
    pending.push_back(std::move(done));
  }
  void cache(uint64_t, uint64_t, Done done) override { pending.push_back(std::move(done)); }
  void block_status(uint64_t, uint64_t, ExtentsDone done) override { done(extents); }

  std::deque<Done> pending;
  Result<std::vector<Extent>> extents = std::vector<Extent>{};

 private:
  ExportInfo info_;
};

// A meta context whose answers the test gives by hand (or at once, when
// `extents` is set).
class ScriptedContext final : public MetaContext {
 public:
  void block_status(uint64_t offset, uint64_t length, ContextExtentsDone done) override {
    asked.emplace_back(offset, length);
    if (extents) return done(*extents);
    pending.push_back(std::move(done));
  }
  std::vector<std::pair<uint64_t, uint64_t>> asked;
  std::deque<ContextExtentsDone> pending;
  std::optional<Result<std::vector<ContextExtent>>> extents;
};

class TransmissionUnitTest : public ::testing::Test {
 protected:
  // With base:allocation (id 1) unless `allocation` is false, then one
  // ScriptedContext per id in `ids`, in that order.
  void start(TransmissionLimits limits = {}, std::vector<uint32_t> ids = {},
             bool allocation = true) {
    auto exp = std::make_unique<ScriptedExport>();
    export_ = exp.get();
    NegotiatedExport n;
    n.exp = std::move(exp);
    n.params = *make_export_params(export_->info(), true);
    n.structured_replies = true;
    if (allocation) n.contexts.push_back({kBaseAllocationContextId, nullptr});
    contexts_.clear();
    for (uint32_t id : ids) {
      auto c = std::make_unique<ScriptedContext>();
      contexts_.push_back(c.get());
      n.contexts.push_back({id, std::move(c)});
    }
    tx_ = std::make_unique<Transmission>(std::move(n), limits, [] {});
  }
  void TearDown() override {
    for (ScriptedContext* c : contexts_) {
      while (!c->pending.empty()) {
        ContextExtentsDone done = std::move(c->pending.front());
        c->pending.pop_front();
        done(Status(Code::kShutdown, "test over"));
      }
    }
    while (!export_->pending.empty()) complete_next(0);
    tx_->stop_input();
    tx_->collect_completions();
    tx_->discard_output();
  }

  // Feeds requests; returns the bytes the Transmission took.
  size_t send(const Bytes& b) { return tx_->consume(b.data().data(), b.size()); }
  static Bytes request(uint16_t type, uint64_t handle, uint64_t offset, uint32_t length,
                       uint16_t flags = 0) {
    Bytes b;
    b.u32(wire::kRequestMagic).u16(flags).u16(type).u64(handle).u64(offset).u32(length);
    return b;
  }
  void complete_next(size_t index, Status status = Status::ok()) {
    Done done = std::move(export_->pending[index]);
    export_->pending.erase(export_->pending.begin() + static_cast<ptrdiff_t>(index));
    done(std::move(status));
  }
  // Everything the Transmission would send now, as one string.
  std::string output() {
    tx_->collect_completions();
    std::string out;
    struct iovec iov[64];
    while (tx_->has_output()) {
      int n = tx_->gather_output(iov, 64);
      size_t bytes = 0;
      for (int i = 0; i < n; ++i) {
        out.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
        bytes += iov[i].iov_len;
      }
      tx_->output_sent(bytes);
    }
    return out;
  }
  // Handles of the structured chunks in `out`, in order.
  static std::vector<uint64_t> handles(const std::string& out) {
    std::vector<uint64_t> h;
    for (size_t pos = 0; pos + 20 <= out.size(); pos += 20 + be32(out.data() + pos + 16)) {
      h.push_back(be64(out.data() + pos + 8));
    }
    return h;
  }
  // Descriptors of a single BLOCK_STATUS chunk, as (length, flags) pairs.
  static std::vector<std::pair<uint32_t, uint32_t>> descriptors(const std::string& out) {
    std::vector<std::pair<uint32_t, uint32_t>> d;
    if (out.size() < 24 || be16(out.data() + 6) != wire::kBlockStatusChunk) return d;
    for (size_t pos = 24; pos + 8 <= out.size(); pos += 8) {
      d.emplace_back(be32(out.data() + pos), be32(out.data() + pos + 4));
    }
    return d;
  }

  // Every chunk in `out`: (type, flags, handle, payload).
  struct ChunkView {
    uint16_t flags, type;
    uint64_t handle;
    std::string payload;
  };
  static std::vector<ChunkView> chunks(const std::string& out) {
    std::vector<ChunkView> v;
    for (size_t pos = 0; pos + 20 <= out.size();) {
      uint32_t len = be32(out.data() + pos + 16);
      v.push_back({be16(out.data() + pos + 4), be16(out.data() + pos + 6), be64(out.data() + pos + 8),
                   out.substr(pos + 20, len)});
      pos += 20 + len;
    }
    return v;
  }
  // The descriptors of one BLOCK_STATUS chunk's payload (after its context id).
  static std::vector<std::pair<uint32_t, uint32_t>> payload_descriptors(const std::string& p) {
    std::vector<std::pair<uint32_t, uint32_t>> d;
    for (size_t pos = 4; pos + 8 <= p.size(); pos += 8) {
      d.emplace_back(be32(p.data() + pos), be32(p.data() + pos + 4));
    }
    return d;
  }

  ScriptedExport* export_ = nullptr;
  std::vector<ScriptedContext*> contexts_;
  std::unique_ptr<Transmission> tx_;
};

TEST_F(TransmissionUnitTest, RepliesFollowCompletionOrder) {
  start();
  Bytes b;
  for (uint64_t h = 1; h <= 3; ++h) b.raw(request(wire::kRead, h, h * 4096, 512).data().data(), 28);
  EXPECT_EQ(send(b), b.size());
  EXPECT_EQ(tx_->in_flight(), 3u);
  EXPECT_EQ(output(), "") << "nothing completed yet";
  complete_next(2);
  complete_next(0);
  EXPECT_EQ(handles(output()), (std::vector<uint64_t>{3, 1}));
  complete_next(0, Status(Code::kIoError, "disk on fire"));
  std::string last = output();
  EXPECT_EQ(handles(last), (std::vector<uint64_t>{2}));
  EXPECT_EQ(be16(last.data() + 6), wire::kError);
  EXPECT_EQ(be32(last.data() + 20), wire::kEio);
  EXPECT_EQ(last.substr(26), "disk on fire");
  EXPECT_EQ(tx_->in_flight(), 0u);
}

TEST_F(TransmissionUnitTest, StopsTakingRequestsAtTheRequestBound) {
  TransmissionLimits limits;
  limits.max_requests = 4;
  start(limits);
  Bytes b;
  for (uint64_t h = 0; h < 10; ++h) b.raw(request(wire::kFlush, h, 0, 0).data().data(), 28);
  EXPECT_EQ(send(b), 4 * 28u);
  EXPECT_FALSE(tx_->wants_input());
  complete_next(0);
  EXPECT_FALSE(tx_->wants_input()) << "the slot is free only once its reply is sent";
  EXPECT_EQ(output().size(), 16u) << "one simple reply";
  EXPECT_TRUE(tx_->wants_input());
}

TEST_F(TransmissionUnitTest, StopsTakingRequestsAtTheByteBound) {
  TransmissionLimits limits;
  limits.max_bytes = 8192;
  start(limits);
  Bytes b;
  for (uint64_t h = 0; h < 3; ++h) b.raw(request(wire::kRead, h, 0, 4096).data().data(), 28);
  EXPECT_EQ(send(b), 2 * 28u);
  EXPECT_FALSE(tx_->wants_input());
  complete_next(0);
  output();
  EXPECT_TRUE(tx_->wants_input());
  EXPECT_EQ(send(request(wire::kRead, 2, 0, 4096)), 28u);
}

TEST_F(TransmissionUnitTest, OneRequestLargerThanTheByteBoundStillRuns) {
  TransmissionLimits limits;
  limits.max_bytes = 4096;
  start(limits);
  EXPECT_EQ(send(request(wire::kRead, 1, 0, 1 << 20)), 28u);
  EXPECT_EQ(export_->pending.size(), 1u);
}

TEST_F(TransmissionUnitTest, BlockStatusMergesNeighboursAndStopsAtTheEnd) {
  start();
  export_->extents =
      std::vector<Extent>{{4096, false, false}, {4096, false, false}, {8192, true, true},
                          {4096, true, true},   {4096, false, true},  {65536, false, false}};
  send(request(wire::kBlockStatus, 1, 0, 16384));
  using D = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(descriptors(output()), (D{{8192, 0}, {8192, 3}}))
      << "merged, and nothing after the extent that reaches the requested length";
  send(request(wire::kBlockStatus, 2, 0, 65536, wire::kReqOne));
  EXPECT_EQ(descriptors(output()), (D{{8192, 0}}));
  send(request(wire::kBlockStatus, 3, 0, 6000, wire::kReqOne));
  EXPECT_EQ(descriptors(output()), (D{{6000, 0}}));
  export_->extents = std::vector<Extent>{{8192, false, false}, {8192, true, true}};
  send(request(wire::kBlockStatus, 4, kSize - 4096, 4096));
  EXPECT_EQ(descriptors(output()), (D{{4096, 0}})) << "clipped at the end of the export";
}

TEST_F(TransmissionUnitTest, BlockStatusFailures) {
  start();
  export_->extents = std::vector<Extent>{};
  send(request(wire::kBlockStatus, 1, 0, 4096));
  std::string out = output();
  EXPECT_EQ(be16(out.data() + 6), wire::kError);
  EXPECT_EQ(be32(out.data() + 20), wire::kEio);
  export_->extents = Status(Code::kNoSpace, "full");
  send(request(wire::kBlockStatus, 2, 0, 4096));
  out = output();
  EXPECT_EQ(be32(out.data() + 20), wire::kEnospc);
}

TEST_F(TransmissionUnitTest, BlockStatusSendsOneChunkPerContextInSelectionOrder) {
  start({}, {7, 3});
  export_->extents = std::vector<Extent>{{65536, true, true}};
  send(request(wire::kBlockStatus, 9, 4096, 16384));
  ASSERT_EQ(contexts_[0]->asked, (std::vector<std::pair<uint64_t, uint64_t>>{{4096, 16384}}));
  ASSERT_EQ(contexts_[1]->asked, contexts_[0]->asked);
  // The contexts answer out of order; nothing goes out before the last.
  contexts_[1]->pending.front()(std::vector<ContextExtent>{{8192, 1}, {4096, 1}, {65536, 0}});
  EXPECT_EQ(output(), "");
  contexts_[0]->pending.front()(std::vector<ContextExtent>{{2048, 5}, {2048, 0}});
  contexts_[0]->pending.clear();
  contexts_[1]->pending.clear();
  auto c = chunks(output());
  ASSERT_EQ(c.size(), 3u);
  using D = std::vector<std::pair<uint32_t, uint32_t>>;
  const uint32_t ids[] = {1, 7, 3};
  const D want[] = {{{65536, 3}}, {{2048, 5}, {2048, 0}}, {{12288, 1}, {65536, 0}}};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(c[i].type, wire::kBlockStatusChunk);
    EXPECT_EQ(c[i].handle, 9u);
    EXPECT_EQ(c[i].flags & 1, i == 2 ? 1 : 0) << "DONE only on the last chunk";
    ASSERT_GE(c[i].payload.size(), 4u);
    EXPECT_EQ(be32(c[i].payload.data()), ids[i]);
    EXPECT_EQ(payload_descriptors(c[i].payload), want[i]) << "context " << ids[i];
  }
  EXPECT_EQ(tx_->in_flight(), 0u);
}

TEST_F(TransmissionUnitTest, BlockStatusOfOtherContextsOnly) {
  start({}, {2}, false);
  contexts_[0]->extents = std::vector<ContextExtent>{{4096, 1}, {4096, 1}, {4096, 0}};
  send(request(wire::kBlockStatus, 1, 0, 65536));
  auto c = chunks(output());
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].flags & 1, 1);
  EXPECT_EQ(be32(c[0].payload.data()), 2u);
  using D = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(payload_descriptors(c[0].payload), (D{{8192, 1}, {4096, 0}}))
      << "merged; a short answer is passed on as it is";
  EXPECT_EQ(export_->pending.size(), 0u);
  EXPECT_EQ(tx_->counters().requests, 1u);
}

TEST_F(TransmissionUnitTest, BlockStatusReqOneAndTheEndApplyToEveryContext) {
  start({}, {2, 3});
  export_->extents = std::vector<Extent>{{65536, false, false}};
  contexts_[0]->extents = std::vector<ContextExtent>{{4096, 1}, {4096, 1}, {4096, 0}};
  contexts_[1]->extents = std::vector<ContextExtent>{{1 << 20, 0}};
  send(request(wire::kBlockStatus, 1, 0, 6000, wire::kReqOne));
  using D = std::vector<std::pair<uint32_t, uint32_t>>;
  auto c = chunks(output());
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(payload_descriptors(c[0].payload), (D{{6000, 0}}));
  EXPECT_EQ(payload_descriptors(c[1].payload), (D{{6000, 1}}));
  EXPECT_EQ(payload_descriptors(c[2].payload), (D{{6000, 0}}));
  send(request(wire::kBlockStatus, 2, kSize - 8192, 8192));
  c = chunks(output());
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(payload_descriptors(c[0].payload), (D{{8192, 0}}));
  EXPECT_EQ(payload_descriptors(c[1].payload), (D{{8192, 1}})) << "stops at the requested length";
  EXPECT_EQ(payload_descriptors(c[2].payload), (D{{8192, 0}})) << "clipped at the end of the export";
}

TEST_F(TransmissionUnitTest, BlockStatusFailsWholeWhenOneContextFails) {
  start({}, {2, 3});
  export_->extents = std::vector<Extent>{{65536, false, false}};
  contexts_[0]->extents = std::vector<ContextExtent>{{4096, 1}};
  contexts_[1]->extents = Status(Code::kNotFound, "base went away");
  send(request(wire::kBlockStatus, 1, 0, 4096));
  auto c = chunks(output());
  ASSERT_EQ(c.size(), 1u) << "one error chunk, nothing else";
  EXPECT_EQ(c[0].type, wire::kError);
  EXPECT_EQ(c[0].flags & 1, 1);
  EXPECT_EQ(be32(c[0].payload.data()), wire::kEio);
  EXPECT_NE(c[0].payload.find("base went away"), std::string::npos);
  contexts_[1]->extents = std::vector<ContextExtent>{};
  send(request(wire::kBlockStatus, 2, 0, 4096));
  c = chunks(output());
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].type, wire::kError) << "a context with nothing to say is an error too";
}

TEST_F(TransmissionUnitTest, LargeWritePayloadCanBeReceivedInPlace) {
  start();
  EXPECT_EQ(send(request(wire::kWrite, 1, 0, 256 << 10)), 28u);
  std::span<uint8_t> window = tx_->direct_payload();
  ASSERT_EQ(window.size(), 256u << 10);
  tx_->direct_payload_received(100 << 10);
  EXPECT_EQ(tx_->direct_payload().size(), 156u << 10);
  EXPECT_TRUE(export_->pending.empty());
  tx_->direct_payload_received(156 << 10);
  EXPECT_EQ(export_->pending.size(), 1u) << "the write goes out once its payload is complete";
  EXPECT_TRUE(tx_->direct_payload().empty());
}

TEST_F(TransmissionUnitTest, StoppingMidPayloadDropsTheRequest) {
  start();
  Bytes b = request(wire::kWrite, 1, 0, 4096);
  b.zeros(1000);
  EXPECT_EQ(send(b), b.size());
  tx_->stop_input();
  EXPECT_TRUE(export_->pending.empty());
  EXPECT_TRUE(tx_->finished());
}

}  // namespace
}  // namespace multisnap::nbd::testing
