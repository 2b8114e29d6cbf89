// The socket-free parts: request checks, export parameters, error mapping,
// Negotiation fed in pieces, MemoryBackend allocation tracking, and the fuzz
// driver on random input.
#include <gtest/gtest.h>

#include <random>

#include "nbd/error_map.h"
#include "nbd/export_params.h"
#include "support/fuzz_driver.h"
#include "support/memory_backend.h"
#include "nbd/negotiation.h"
#include "nbd/protocol.h"
#include "nbd/raw_client.h"
#include "nbd/request.h"
#include "util/log.h"

namespace multisnap::nbd::testing {
namespace {

ExportParams params_for(const ExportInfo& info, bool structured = true) {
  auto p = make_export_params(info, structured);
  EXPECT_TRUE(p.is_ok());
  return *p;
}

TEST(ExportParamsTest, FlagsFollowTheExport) {
  ExportInfo rw{.name = "rw", .size = 1 << 20};
  ExportParams p = params_for(rw, false);
  EXPECT_EQ(p.flags, wire::kHasFlags | wire::kSendFlush | wire::kSendFua | wire::kSendTrim |
                         wire::kSendWriteZeroes | wire::kSendFastZero | wire::kSendCache);
  EXPECT_TRUE(params_for(rw, true).has(wire::kSendDf));
  ExportInfo ro{
      .name = "ro", .size = 1 << 20, .read_only = true, .can_multi_conn = true, .can_cache = false};
  EXPECT_EQ(params_for(ro, false).flags, wire::kHasFlags | wire::kReadOnly | wire::kCanMultiConn);
  ExportInfo no_zero{.name = "nz", .size = 4096, .can_trim = false, .can_write_zeroes = false};
  EXPECT_FALSE(
      params_for(no_zero).has(wire::kSendWriteZeroes | wire::kSendFastZero | wire::kSendTrim));
}

TEST(ExportParamsTest, BlockSizesAreSane) {
  ExportParams p = params_for({.name = "a",
                               .size = 1 << 20,
                               .min_block = 512,
                               .preferred_block = 100,
                               .max_block = 100000});
  EXPECT_EQ(p.min_block, 512u);
  EXPECT_EQ(p.preferred_block, 512u);
  EXPECT_EQ(p.max_block, 99840u);  // a multiple of min_block
  EXPECT_EQ(params_for({.name = "b", .max_block = 0xffffffffu}).max_block, kMaxPayload);
  EXPECT_FALSE(make_export_params({.name = "c", .min_block = 3}, false).is_ok());
  EXPECT_FALSE(make_export_params({.name = "d", .min_block = 1 << 17}, false).is_ok());
}

TEST(ErrorMapTest, StatusBecomesAnNbdError) {
  EXPECT_EQ(transmission_error(Status::ok()), 0u);
  EXPECT_EQ(transmission_error(Status(Code::kIoError, "")), proto::kEio);
  EXPECT_EQ(transmission_error(Status(Code::kNoSpace, "")), proto::kEnospc);
  EXPECT_EQ(transmission_error(Status(Code::kReadOnly, "")), proto::kEperm);
  EXPECT_EQ(transmission_error(Status(Code::kInvalidArgument, "")), proto::kEinval);
  EXPECT_EQ(transmission_error(Status(Code::kOutOfRange, "")), proto::kEinval);
  EXPECT_EQ(transmission_error(Status(Code::kNotSupported, "")), proto::kEnotsup);
  EXPECT_EQ(transmission_error(Status(Code::kShutdown, "")), proto::kEshutdown);
  EXPECT_EQ(transmission_error(Status(Code::kNotFound, "")), proto::kEio);
  EXPECT_EQ(transmission_error(Status(Code::kBusy, "")), proto::kEio);
  EXPECT_EQ(transmission_error(Status(Code::kCorruption, "")), proto::kEio);
  EXPECT_EQ(option_error(Status(Code::kNotFound, "")), proto::kRepErrUnknown);
  EXPECT_EQ(option_error(Status(Code::kShutdown, "")), proto::kRepErrShutdown);
  EXPECT_EQ(option_error(Status(Code::kIoError, "")), proto::kRepErrPlatform);
}

TEST(RequestCheckTest, ErrorsTheSpecAsksFor) {
  ExportParams rw =
      params_for({.name = "rw", .size = 1 << 20, .min_block = 512, .max_block = 65536});
  ExportParams ro = params_for({.name = "ro", .size = 1 << 20, .read_only = true}, false);
  RequestContext ctx{&rw, true, true};
  RequestContext ro_ctx{&ro, false, false};
  auto check = [](const RequestContext& c, uint16_t type, uint64_t offset, uint32_t length,
                  uint16_t flags = 0) {
    return check_request({flags, type, 1, offset, length}, c).error;
  };
  EXPECT_EQ(check(ctx, wire::kRead, 0, 512), 0u);
  EXPECT_EQ(check(ctx, wire::kRead, 512, 65536 + 512), proto::kEinval);
  EXPECT_EQ(check(ctx, wire::kWrite, 1 << 20, 512), proto::kEnospc);
  EXPECT_EQ(check(ctx, wire::kWriteZeroes, (1 << 20) - 512, 1024), proto::kEnospc);
  EXPECT_EQ(check(ctx, wire::kTrim, (1 << 20) - 512, 1024), proto::kEinval);
  EXPECT_EQ(check(ctx, wire::kRead, 1, 512), proto::kEinval);
  EXPECT_EQ(check(ctx, wire::kTrim, 0, 1 << 20), 0u);
  EXPECT_EQ(check(ctx, wire::kWriteZeroes, 0, 1 << 20, wire::kFastZero | wire::kNoHole), 0u);
  EXPECT_EQ(check(ctx, wire::kBlockStatus, 0, 512, wire::kReqOne), 0u);
  EXPECT_EQ(check(ctx, wire::kBlockStatus, 0, 0), proto::kEinval);
  EXPECT_EQ(check(ctx, wire::kFlush, 0, 0, wire::kFua), 0u);
  EXPECT_EQ(check(ctx, wire::kCache, ~0ull, 512), proto::kEinval);
  EXPECT_EQ(check(ctx, 9, 0, 0), proto::kEinval);
  EXPECT_EQ(check(ro_ctx, wire::kWrite, 0, 512), proto::kEperm);
  EXPECT_EQ(check(ro_ctx, wire::kWriteZeroes, 0, 512), proto::kEperm);
  EXPECT_EQ(check(ro_ctx, wire::kBlockStatus, 0, 512), proto::kEinval);
  EXPECT_EQ(check(ro_ctx, wire::kRead, 0, 512, wire::kDf), proto::kEinval);
  EXPECT_EQ(check(ro_ctx, wire::kRead, 0, 512, wire::kFua), proto::kEinval);
}

// Runs bytes through a Negotiation, `piece` bytes at a time; returns all
// output and the final state.
std::pair<std::string, Negotiation::State> negotiate(Backend& backend, const Bytes& input,
                                                     size_t piece) {
  Negotiation n(backend);
  std::string out;
  std::vector<uint8_t> pending;
  const auto& data = input.data();
  for (size_t pos = 0; pos < data.size() && n.state() == Negotiation::State::kOptions;) {
    size_t k = std::min(piece, data.size() - pos);
    pending.insert(pending.end(), data.begin() + pos, data.begin() + pos + k);
    pos += k;
    size_t used = n.consume(pending.data(), pending.size(), &out);
    pending.erase(pending.begin(), pending.begin() + used);
  }
  return {out, n.state()};
}

TEST(NegotiationTest, SameRepliesWhateverTheReadSizes) {
  set_log_level(LogLevel::kWarn);
  MemoryBackend backend;
  ASSERT_TRUE(backend.add_export({.name = "disk", .description = "d", .size = 65536}).is_ok());
  Bytes input;
  input.u32(3);
  input.u64(wire::kIHaveOpt).u32(wire::kList).u32(0);
  input.u64(wire::kIHaveOpt).u32(wire::kStructuredReply).u32(0);
  input.u64(wire::kIHaveOpt).u32(77).u32(3).str("abc");
  input.u64(wire::kIHaveOpt).u32(wire::kInfo).u32(4 + 4 + 2 + 2).u32(4).str("disk").u16(1).u16(1);
  input.u64(wire::kIHaveOpt).u32(wire::kGo).u32(4 + 2).u32(0).u16(0);
  auto [whole, state] = negotiate(backend, input, input.size());
  EXPECT_EQ(state, Negotiation::State::kTransmission);
  for (size_t piece : {1, 2, 3, 7, 16, 17}) {
    auto [out, s] = negotiate(backend, input, piece);
    EXPECT_EQ(out, whole) << "piece " << piece;
    EXPECT_EQ(s, Negotiation::State::kTransmission);
  }
}

TEST(NegotiationTest, SkipsOversizedOptionsInPieces) {
  MemoryBackend backend;
  ASSERT_TRUE(backend.add_export({.name = "disk", .size = 65536}).is_ok());
  Bytes input;
  input.u32(1);
  input.u64(wire::kIHaveOpt).u32(wire::kInfo).u32(100000).zeros(100000);
  input.u64(wire::kIHaveOpt).u32(wire::kAbort).u32(0);
  for (size_t piece : {size_t{1000}, size_t{65536}, input.size()}) {
    auto [out, state] = negotiate(backend, input, piece);
    EXPECT_EQ(state, Negotiation::State::kAborted);
    ASSERT_EQ(out.size(), 2 * 20u + 19);  // TOO_BIG with its message, then ACK
    EXPECT_EQ(be32(out.data() + 12), wire::kErrTooBig);
  }
}

// SET_META_CONTEXT then GO, without sockets: what the transmission phase gets.
TEST(NegotiationTest, SelectedContextsReachTheTransmissionPhase) {
  MemoryBackend backend;
  ASSERT_TRUE(backend.add_export({.name = "disk", .size = 65536}).is_ok());
  ASSERT_TRUE(backend.add_export({.name = "other", .size = 65536}).is_ok());
  auto meta = [](std::string_view name, const std::vector<std::string>& queries) {
    Bytes q;
    q.u32(static_cast<uint32_t>(name.size())).str(name).u32(static_cast<uint32_t>(queries.size()));
    for (const auto& s : queries) q.u32(static_cast<uint32_t>(s.size())).str(s);
    Bytes b;
    b.u64(wire::kIHaveOpt).u32(wire::kSetMetaContext).u32(static_cast<uint32_t>(q.size()));
    b.raw(q.data().data(), q.size());
    return b;
  };
  auto go = [](std::string_view name) {
    Bytes b;
    b.u64(wire::kIHaveOpt).u32(wire::kGo).u32(static_cast<uint32_t>(4 + name.size() + 2));
    b.u32(static_cast<uint32_t>(name.size())).str(name).u16(0);
    return b;
  };
  auto run = [&](const std::vector<Bytes>& options) {
    Negotiation n(backend);
    Bytes input;
    input.u32(3);
    input.u64(wire::kIHaveOpt).u32(wire::kStructuredReply).u32(0);
    for (const Bytes& o : options) input.raw(o.data().data(), o.size());
    std::string out;
    EXPECT_EQ(n.consume(input.data().data(), input.size(), &out), input.size());
    EXPECT_EQ(n.state(), Negotiation::State::kTransmission);
    return n.take_export();
  };
  NegotiatedExport e = run({meta("disk", {"memory:stripes:8", "x-no:such", "base:allocation"}), go("disk")});
  ASSERT_EQ(e.contexts.size(), 2u);
  EXPECT_EQ(e.contexts[0].id, 2u);
  EXPECT_NE(e.contexts[0].context, nullptr);
  EXPECT_EQ(e.contexts[1].id, kBaseAllocationContextId);
  EXPECT_EQ(e.contexts[1].context, nullptr) << "base:allocation is the Export's block_status";
  e = run({meta("disk", {"memory:stripes:8"}), go("other")});
  EXPECT_TRUE(e.contexts.empty()) << "selected for another export";
  e = run({meta("disk", {"memory:stripes:8"}), meta("disk", {"memory:stripes:9"}),
           meta("disk", {"memory:stripes:8"}), go("disk")});
  ASSERT_EQ(e.contexts.size(), 1u);
  EXPECT_EQ(e.contexts[0].id, 2u) << "a name keeps its id for the connection";
}

// STARTTLS, without sockets: what each TLS mode answers, before and after
// the (here pretended) TLS handshake. Replies are 20-byte headers (magic,
// option, type, length) followed by their data.
TEST(NegotiationTest, StartTlsByMode) {
  MemoryBackend backend;
  ASSERT_TRUE(backend.add_export({.name = "disk", .size = 65536}).is_ok());
  auto option = [](uint32_t opt, std::string_view data = {}) {
    Bytes b;
    b.u64(wire::kIHaveOpt).u32(opt).u32(static_cast<uint32_t>(data.size())).str(data);
    return b;
  };
  constexpr uint32_t kStartTls = 5, kList = 3;
  constexpr uint32_t kAck = 1, kErrUnsup = 0x80000001u, kErrInvalid = 0x80000003u, kErrTlsReqd = 0x80000005u;
  // Feeds one option; returns the reply type of the first reply.
  auto reply_type = [&](Negotiation& n, const Bytes& b) {
    std::string out;
    EXPECT_EQ(n.consume(b.data().data(), b.size(), &out), b.size());
    EXPECT_GE(out.size(), 20u);
    return out.size() >= 20 ? be32(out.data() + 12) : 0u;
  };
  Bytes flags;
  flags.u32(3);
  std::string out;
  {
    Negotiation n(backend, Negotiation::kDefaultMaxOptionLength, TlsMode::kOff);
    n.consume(flags.data().data(), flags.size(), &out);
    EXPECT_EQ(reply_type(n, option(kStartTls)), kErrUnsup);
    EXPECT_EQ(n.state(), Negotiation::State::kOptions);
  }
  {
    Negotiation n(backend, Negotiation::kDefaultMaxOptionLength, TlsMode::kOn);
    n.consume(flags.data().data(), flags.size(), &out);
    EXPECT_EQ(reply_type(n, option(kList)), 2u) << "kOn serves plain clients";
    EXPECT_EQ(reply_type(n, option(kStartTls, "x")), kErrInvalid) << "STARTTLS takes no data";
    // STARTTLS with a LIST behind it: consumption stops at STARTTLS, and the
    // LIST is left for the connection, which drops such a client.
    Bytes both = option(kStartTls);
    Bytes list = option(kList);
    both.raw(list.data().data(), list.size());
    std::string o;
    EXPECT_EQ(n.consume(both.data().data(), both.size(), &o), 16u);
    EXPECT_EQ(be32(o.data() + 12), kAck);
    EXPECT_EQ(n.state(), Negotiation::State::kStartTls);
    n.tls_started();
    EXPECT_TRUE(n.tls_active());
    EXPECT_EQ(n.state(), Negotiation::State::kOptions);
    EXPECT_EQ(reply_type(n, option(kStartTls)), kErrInvalid) << "TLS is already active";
  }
  {
    Negotiation n(backend, Negotiation::kDefaultMaxOptionLength, TlsMode::kRequire);
    n.consume(flags.data().data(), flags.size(), &out);
    EXPECT_EQ(reply_type(n, option(kList)), kErrTlsReqd);
    EXPECT_EQ(reply_type(n, option(wire::kStructuredReply)), kErrTlsReqd);
    Bytes go;
    go.u32(4).str("disk").u16(0);
    EXPECT_EQ(reply_type(n, option(wire::kGo, std::string_view(reinterpret_cast<const char*>(go.data().data()), go.size()))),
              kErrTlsReqd);
    EXPECT_EQ(reply_type(n, option(kStartTls)), kAck);
    n.tls_started();
    EXPECT_EQ(reply_type(n, option(kList)), 2u);
    EXPECT_EQ(reply_type(n, option(wire::kGo, std::string_view(reinterpret_cast<const char*>(go.data().data()), go.size()))),
              3u) << "NBD_REP_INFO";
    EXPECT_EQ(n.state(), Negotiation::State::kTransmission);
  }
  {
    // EXPORT_NAME cannot carry ERR_TLS_REQD: the connection fails.
    Negotiation n(backend, Negotiation::kDefaultMaxOptionLength, TlsMode::kRequire);
    n.consume(flags.data().data(), flags.size(), &out);
    Bytes b = option(1, "disk");
    std::string o;
    n.consume(b.data().data(), b.size(), &o);
    EXPECT_EQ(n.state(), Negotiation::State::kFailed);
    EXPECT_TRUE(o.empty());
  }
  {
    // ABORT is allowed before TLS.
    Negotiation n(backend, Negotiation::kDefaultMaxOptionLength, TlsMode::kRequire);
    n.consume(flags.data().data(), flags.size(), &out);
    EXPECT_EQ(reply_type(n, option(2)), kAck);
    EXPECT_EQ(n.state(), Negotiation::State::kAborted);
  }
}

TEST(MemoryBackendTest, TracksAllocation) {
  MemoryBackend backend;
  ASSERT_TRUE(backend.add_export({.name = "m", .size = 10 * 4096 + 512, .min_block = 512}).is_ok());
  EXPECT_EQ(backend.add_export({.name = "m", .size = 4096}).code(), Code::kExists);
  auto exp = backend.open_export("m");
  ASSERT_TRUE(exp.is_ok());
  std::vector<Extent> got;
  auto status_of = [&](uint64_t off, uint64_t len) {
    got.clear();
    (*exp)->block_status(off, len, [&](Result<std::vector<Extent>> r) {
      ASSERT_TRUE(r.is_ok());
      got = *r;
    });
    std::vector<std::tuple<uint32_t, bool, bool>> out;
    for (const Extent& e : got) out.emplace_back(e.length, e.hole, e.zero);
    return out;
  };
  using V = std::vector<std::tuple<uint32_t, bool, bool>>;
  EXPECT_EQ(status_of(0, 10 * 4096 + 512), (V{{10 * 4096 + 512, true, true}}));
  std::vector<uint8_t> data(512, 7);
  bool ok = false;
  (*exp)->write(4096 + 512, 512, data.data(), false, [&](Status s) { ok = s.is_ok(); });
  EXPECT_TRUE(ok);
  EXPECT_EQ(status_of(0, 3 * 4096),
            (V{{4096, true, true}, {4096, false, false}, {4096, true, true}}));
  // The short last granule: writing it, then zeroing it to the end punches it.
  (*exp)->write(10 * 4096, 512, data.data(), false, [&](Status s) { ok = s.is_ok(); });
  EXPECT_EQ(status_of(10 * 4096, 512), (V{{512, false, false}}));
  (*exp)->write_zeroes(10 * 4096, 512, false, false, false, [&](Status s) { ok = s.is_ok(); });
  EXPECT_EQ(status_of(10 * 4096, 512), (V{{512, true, true}}));
  // A trim of part of a granule leaves it allocated.
  (*exp)->trim(4096, 2048, false, [&](Status s) { ok = s.is_ok(); });
  EXPECT_EQ(status_of(4096, 4096), (V{{4096, false, false}}));
  std::vector<uint8_t> back(512);
  ASSERT_TRUE(backend.read("m", 4096 + 512, back.data(), back.size()).is_ok());
  EXPECT_EQ(back, data) << "a partial trim keeps the data";
  EXPECT_EQ(backend.stats("m").open_exports, 1);
  EXPECT_TRUE(backend.remove_export("m").is_ok());
  EXPECT_EQ(backend.open_export("m").status().code(), Code::kNotFound);
  (*exp)->read(4096 + 512, 512, back.data(), [&](Status s) { ok = s.is_ok(); });
  EXPECT_TRUE(ok) << "an open export outlives its removal";
}

TEST(FuzzDriverTest, RandomInputsAreHarmless) {
  set_log_level(LogLevel::kOff);
  std::mt19937_64 rng(12345);
  // A valid prefix (flags, STRUCTURED_REPLY, SET_META_CONTEXT, GO) so that
  // random bytes reach the request parser too.
  Bytes prefix;
  prefix.u8(40).u32(3);
  prefix.u64(wire::kIHaveOpt).u32(wire::kStructuredReply).u32(0);
  Bytes meta;
  meta.u32(4).str("disk").u32(1).u32(15).str("base:allocation");
  prefix.u64(wire::kIHaveOpt)
      .u32(wire::kSetMetaContext)
      .u32(meta.size())
      .raw(meta.data().data(), meta.size());
  prefix.u64(wire::kIHaveOpt).u32(wire::kGo).u32(10).u32(4).str("disk").u16(0);
  int negotiated = 0;
  uint64_t requests = 0, errors = 0, reply_bytes = 0;
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint8_t> input;
    bool structured = i % 2 == 0;
    if (structured) input = prefix.data();
    size_t n = rng() % 400;
    for (size_t k = 0; k < n; ++k) {
      // Mostly plausible requests, sometimes noise.
      if (structured && rng() % 3 == 0) {
        Bytes r;
        r.u32(wire::kRequestMagic).u16(rng() % 32).u16(rng() % 9).u64(k).u64(rng() % (2 << 20));
        r.u32(rng() % 3 == 0 ? rng() : rng() % 70000);
        input.insert(input.end(), r.data().begin(), r.data().end());
      } else {
        input.push_back(static_cast<uint8_t>(rng()));
      }
    }
    FuzzRun run = run_fuzz_input(input.data(), input.size());
    // The valid prefix always gets through the handshake; what follows is
    // parsed as requests, answered or refused.
    if (structured) {
      EXPECT_TRUE(run.negotiated) << "input " << i;
      ++negotiated;
    }
    requests += run.counters.requests;
    errors += run.counters.errors;
    reply_bytes += run.reply_bytes;
  }
  set_log_level(LogLevel::kWarn);
  // The random requests reached the parser and the backend: many were
  // served, many refused, and every one was answered.
  EXPECT_EQ(negotiated, 1500);
  EXPECT_GT(requests, 300u);
  EXPECT_GT(errors, 100u);
  EXPECT_GT(requests - errors, 10u);
  EXPECT_GE(reply_bytes, requests * 16);  // at least a simple reply header each
}

}  // namespace
}  // namespace multisnap::nbd::testing
