// The handshake and option haggling, byte by byte over a raw socket.
#include <gtest/gtest.h>

#include <map>

#include "nbd/test_server.h"

namespace multisnap::nbd::testing {
namespace {

using HandshakeTest = ServerTest;

TEST_F(HandshakeTest, GreetingAdvertisesFixedNewstyleAndNoZeroes) {
  auto c = connect();
  ASSERT_TRUE(c);
  auto flags = c->read_greeting();
  ASSERT_TRUE(flags);
  EXPECT_EQ(*flags, 3u);  // NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
}

TEST_F(HandshakeTest, UnknownClientFlagsDropTheConnection) {
  auto c = connect();
  ASSERT_TRUE(c->handshake(1u | 0x100u));
  EXPECT_TRUE(c->closed_by_server());
  expect_server_healthy();
}

TEST_F(HandshakeTest, ListShowsEveryExportWithItsDescription) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(wire::kList));
  std::map<std::string, std::string> seen;
  for (;;) {
    auto r = c->read_option_reply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->magic, wire::kOptReplyMagic);
    EXPECT_EQ(r->option, wire::kList);
    if (r->type == wire::kAck) break;
    ASSERT_EQ(r->type, wire::kServer);
    ASSERT_GE(r->data.size(), 4u);
    uint32_t len = be32(r->data.data());
    ASSERT_LE(len + 4, r->data.size());
    seen[r->data.substr(4, len)] = r->data.substr(4 + len);
  }
  std::map<std::string, std::string> expected = {
      {"aligned", "512-byte blocks"}, {"origin", "the origin"}, {"snapshot/1", "snapshot 1"}};
  EXPECT_EQ(seen, expected);
}

TEST_F(HandshakeTest, ListWithDataIsInvalidAndTheConnectionGoesOn) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(wire::kList, Bytes().u32(7)));
  auto r = c->read_option_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, wire::kErrInvalid);
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
}

TEST_F(HandshakeTest, InfoOnTheDefaultExportGivesItsCanonicalNameAndDetails) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  auto info =
      c->info(wire::kInfo, "", {wire::kInfoName, wire::kInfoDescription, wire::kInfoBlockSize});
  ASSERT_TRUE(info);
  EXPECT_EQ(info->final_type, wire::kAck);
  ASSERT_TRUE(info->has_export);
  EXPECT_EQ(info->size, kOriginSize);
  EXPECT_TRUE(info->flags & wire::kHasFlags);
  EXPECT_FALSE(info->flags & wire::kReadOnly);
  EXPECT_TRUE(info->flags & wire::kSendFlush);
  EXPECT_TRUE(info->flags & wire::kSendFua);
  EXPECT_TRUE(info->flags & wire::kSendTrim);
  EXPECT_TRUE(info->flags & wire::kSendWriteZeroes);
  EXPECT_TRUE(info->flags & wire::kSendFastZero);
  EXPECT_TRUE(info->flags & wire::kSendCache);
  EXPECT_TRUE(info->flags & wire::kCanMultiConn);
  EXPECT_FALSE(info->flags & wire::kSendDf) << "DF needs structured replies";
  EXPECT_EQ(info->name, "origin");
  EXPECT_EQ(info->description, "the origin");
  ASSERT_TRUE(info->has_block_size);
  EXPECT_EQ(info->min_block, 1u);
  EXPECT_EQ(info->preferred_block, 4096u);
  EXPECT_EQ(info->max_block, 32u << 20);
  // INFO does not end the handshake.
  auto go = c->info(wire::kGo, "snapshot/1", {wire::kInfoBlockSize});
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
  EXPECT_TRUE(go->flags & wire::kReadOnly);
  EXPECT_FALSE(go->flags & (wire::kSendTrim | wire::kSendWriteZeroes | wire::kCanMultiConn));
  EXPECT_FALSE(go->name.has_value()) << "NAME was not requested";
}

TEST_F(HandshakeTest, InfoReportsBlockSizes) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  auto info = c->info(wire::kInfo, "aligned", {wire::kInfoBlockSize});
  ASSERT_TRUE(info);
  EXPECT_EQ(info->min_block, 512u);
  EXPECT_EQ(info->preferred_block, 4096u);
  EXPECT_EQ(info->max_block, 64u << 10);
}

TEST_F(HandshakeTest, GoEntersTransmission) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  auto go = c->info(wire::kGo, "", {wire::kInfoName});
  ASSERT_TRUE(go);
  ASSERT_EQ(go->final_type, wire::kAck);
  EXPECT_EQ(go->name, "origin");
  std::string data;
  EXPECT_EQ(c->command(wire::kRead, 0, 512, 0, nullptr, &data), 0u);
  EXPECT_EQ(data, std::string(512, '\0'));
  EXPECT_EQ(server_->count_connections([](std::string_view n) { return n == "origin"; }), 1u);
}

TEST_F(HandshakeTest, UnknownExportIsErrUnknownAndTheClientMayRetry) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  auto info = c->info(wire::kInfo, "snapshot/99");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->final_type, wire::kErrUnknown);
  EXPECT_FALSE(info->has_export);
  auto go = c->info(wire::kGo, "snapshot/99");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kErrUnknown);
  go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
}

TEST_F(HandshakeTest, MalformedInfoAndGoAreInvalid) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  std::vector<Bytes> bad = {
      Bytes(),                                     // nothing
      Bytes().u32(100).str("origin").u16(0),       // name length past the end
      Bytes().u32(6).str("origin"),                // no request count
      Bytes().u32(6).str("origin").u16(2).u16(1),  // one request short
      Bytes().u32(6).str("origin").u16(0).u8(0),   // trailing byte
      Bytes().u32(5000).zeros(5000).u16(0),        // name longer than 4096
  };
  for (const Bytes& payload : bad) {
    for (uint32_t option : {wire::kInfo, wire::kGo}) {
      ASSERT_TRUE(c->send_option(option, payload));
      auto r = c->read_option_reply();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->option, option);
      EXPECT_EQ(r->type, wire::kErrInvalid);
    }
  }
  expect_server_healthy();
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
}

TEST_F(HandshakeTest, ExportNameSendsSizeFlagsAndZeroes) {
  auto c = connect();
  ASSERT_TRUE(c->handshake(1));  // fixed newstyle, without NO_ZEROES
  ASSERT_TRUE(c->send_option(wire::kExportName, Bytes().str("snapshot/1")));
  auto reply = c->recv_bytes(8 + 2 + 124);
  ASSERT_TRUE(reply);
  EXPECT_EQ(be64(reply->data()), kSnapshotSize);
  EXPECT_TRUE(be16(reply->data() + 8) & wire::kReadOnly);
  EXPECT_EQ(reply->substr(10), std::string(124, '\0'));
  std::string data;
  EXPECT_EQ(c->command(wire::kRead, 4096, 4096, 0, nullptr, &data), 0u);
  EXPECT_EQ(data.size(), 4096u);
}

TEST_F(HandshakeTest, ExportNameWithNoZeroesAndTheDefaultExport) {
  auto c = connect();
  ASSERT_TRUE(c->handshake(3));
  ASSERT_TRUE(c->send_option(wire::kExportName));
  auto reply = c->recv_bytes(10);
  ASSERT_TRUE(reply);
  EXPECT_EQ(be64(reply->data()), kOriginSize);
  // No zeroes follow: the next bytes are the reply to our request.
  EXPECT_EQ(c->command(wire::kFlush, 0, 0), 0u);
}

TEST_F(HandshakeTest, ExportNameOfAnUnknownExportClosesTheConnection) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(wire::kExportName, Bytes().str("nope")));
  EXPECT_TRUE(c->closed_by_server());
  expect_server_healthy();
}

TEST_F(HandshakeTest, AbortIsAcknowledgedThenClosed) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(wire::kAbort));
  auto r = c->read_option_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->option, wire::kAbort);
  EXPECT_EQ(r->type, wire::kAck);
  EXPECT_TRUE(c->closed_by_server());
}

TEST_F(HandshakeTest, UnknownOptionsAreUnsupported) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  for (uint32_t option : {4u, uint32_t(wire::kStartTls), 11u, 42u, 0xdeadbeefu}) {
    ASSERT_TRUE(c->send_option(option, Bytes().str("some data")));
    auto r = c->read_option_reply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->option, option);
    EXPECT_EQ(r->type, wire::kErrUnsup);
  }
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
}

TEST_F(HandshakeTest, OversizedOptionIsSkippedAndRefused) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  Bytes huge;
  huge.zeros(200 << 10);  // over the 64 KiB cap, under the 1 MiB skip limit
  ASSERT_TRUE(c->send_option(wire::kGo, huge));
  auto r = c->read_option_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, wire::kErrTooBig);
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_EQ(go->final_type, wire::kAck);
}

TEST_F(HandshakeTest, AbsurdOptionLengthDropsTheConnection) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send(Bytes().u64(wire::kIHaveOpt).u32(wire::kGo).u32(0xffffffffu)));
  EXPECT_TRUE(c->closed_by_server());
  expect_server_healthy();
  EXPECT_GE(server_->stats().protocol_violations, 1u);
}

TEST_F(HandshakeTest, LongExportNameDropsTheConnection) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  Bytes name;
  name.zeros(5000);
  ASSERT_TRUE(c->send_option(wire::kExportName, name));
  EXPECT_TRUE(c->closed_by_server());
}

TEST_F(HandshakeTest, BadOptionMagicDropsTheConnection) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send(Bytes().u64(0x1122334455667788ull).u32(wire::kList).u32(0)));
  EXPECT_TRUE(c->closed_by_server());
  expect_server_healthy();
}

TEST_F(HandshakeTest, ClientVanishingMidOptionIsHarmless) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send(Bytes().u64(wire::kIHaveOpt).u32(wire::kGo).u32(100).u32(6)));
  c->close();
  expect_server_healthy();
}

TEST_F(HandshakeTest, StructuredReplyNegotiation) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(wire::kStructuredReply, Bytes().u8(1)));
  auto r = c->read_option_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, wire::kErrInvalid);
  ASSERT_TRUE(c->structured_replies());
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  EXPECT_TRUE(go->flags & wire::kSendDf);
  std::string data;
  ASSERT_TRUE(c->send_request(0, wire::kRead, 77, 0, 1000));
  auto reply = c->read_reply();
  ASSERT_TRUE(reply);
  ASSERT_TRUE(reply->structured) << "READ must use a structured reply";
  EXPECT_EQ(reply->chunk.type, wire::kOffsetData);
  EXPECT_EQ(reply->chunk.handle, 77u);
  EXPECT_EQ(reply->chunk.flags & 1, 1);
  ASSERT_EQ(reply->chunk.payload.size(), 8u + 1000u);
  EXPECT_EQ(be64(reply->chunk.payload.data()), 0u);
}

TEST_F(HandshakeTest, MetaContextNeedsStructuredReplies) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  Bytes p;
  p.u32(6).str("origin").u32(0);
  for (uint32_t option : {wire::kListMetaContext, wire::kSetMetaContext}) {
    ASSERT_TRUE(c->send_option(option, p));
    auto r = c->read_option_reply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->type, wire::kErrInvalid);
  }
}

// Lists meta contexts for `queries`; the names returned, or nullopt plus the
// error type in *error.
std::optional<std::vector<std::string>> list_contexts(RawClient& c, std::string_view name,
                                                      const std::vector<std::string>& queries,
                                                      uint32_t* error = nullptr) {
  Bytes p;
  p.u32(static_cast<uint32_t>(name.size())).str(name).u32(static_cast<uint32_t>(queries.size()));
  for (const std::string& q : queries) p.u32(static_cast<uint32_t>(q.size())).str(q);
  if (!c.send_option(wire::kListMetaContext, p)) return std::nullopt;
  std::vector<std::string> names;
  for (;;) {
    auto r = c.read_option_reply();
    if (!r) return std::nullopt;
    if (r->type == wire::kAck) return names;
    if (r->type != wire::kMetaContext) {
      if (error) *error = r->type;
      return std::nullopt;
    }
    EXPECT_EQ(be32(r->data.data()), 0u) << "LIST replies carry id 0";
    names.push_back(r->data.substr(4));
  }
}

TEST_F(HandshakeTest, ListMetaContext) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  using Names = std::vector<std::string>;
  EXPECT_EQ(list_contexts(*c, "origin", {}), (Names{"base:allocation", "memory:stripes:"}))
      << "no query: every context, the backend's as a family";
  EXPECT_EQ(list_contexts(*c, "origin", {"base:"}), Names{"base:allocation"});
  EXPECT_EQ(list_contexts(*c, "origin", {"memory:"}), Names{"memory:stripes:"});
  EXPECT_EQ(list_contexts(*c, "origin", {"memory:stripes:0", "memory:stripes:x"}), Names{});
  EXPECT_EQ(list_contexts(*c, "origin", {"memory:stripes:512", "base:allocation", "x-a:b",
                                         "memory:stripes:512"}),
            (Names{"memory:stripes:512", "base:allocation"}));
  EXPECT_EQ(list_contexts(*c, "", {"base:allocation"}), Names{"base:allocation"});
  EXPECT_EQ(list_contexts(*c, "origin", {"x-other:thing", "base:nothing"}), Names{});
  uint32_t error = 0;
  EXPECT_FALSE(list_contexts(*c, "snapshot/99", {}, &error));
  EXPECT_EQ(error, wire::kErrUnknown);
  EXPECT_FALSE(list_contexts(*c, "origin", {"no-colon"}, &error));
  EXPECT_EQ(error, wire::kErrInvalid);
  // A query length running past the end of the option.
  ASSERT_TRUE(c->send_option(wire::kListMetaContext,
                             Bytes().u32(6).str("origin").u32(1).u32(50).str("base:")));
  auto r = c->read_option_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, wire::kErrInvalid);
  // A query count with no queries.
  ASSERT_TRUE(c->send_option(wire::kListMetaContext, Bytes().u32(6).str("origin").u32(3)));
  r = c->read_option_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, wire::kErrInvalid);
}

TEST_F(HandshakeTest, SetMetaContextSelectsBaseAllocation) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  auto ids = c->set_meta_context("origin", "base:");
  ASSERT_TRUE(ids);
  EXPECT_TRUE(ids->empty()) << "'base:' selects nothing in SET";
  ids = c->set_meta_context("origin", "base:allocation");
  ASSERT_TRUE(ids);
  ASSERT_EQ(ids->size(), 1u);
  EXPECT_NE((*ids)[0], 0u);
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  ASSERT_EQ(go->final_type, wire::kAck);
  ASSERT_TRUE(c->send_request(0, wire::kBlockStatus, 5, 0, 65536));
  auto reply = c->read_reply();
  ASSERT_TRUE(reply);
  ASSERT_TRUE(reply->structured);
  EXPECT_EQ(reply->chunk.type, wire::kBlockStatusChunk);
  ASSERT_GE(reply->chunk.payload.size(), 12u);
  EXPECT_EQ(be32(reply->chunk.payload.data()), (*ids)[0]);
}

TEST_F(HandshakeTest, MetaContextForAnotherExportDoesNotCarryOver) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  auto ids = c->set_meta_context("snapshot/1", "base:allocation");
  ASSERT_TRUE(ids);
  ASSERT_EQ(ids->size(), 1u);
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  ASSERT_EQ(go->final_type, wire::kAck);
  EXPECT_EQ(c->command(wire::kBlockStatus, 0, 4096), wire::kEinval);
}

TEST_F(HandshakeTest, LaterSetMetaContextReplacesTheSelection) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  auto ids = c->set_meta_context("origin", "base:allocation");
  ASSERT_TRUE(ids);
  ASSERT_EQ(ids->size(), 1u);
  ids = c->set_meta_context("origin", "x-other:thing");
  ASSERT_TRUE(ids);
  EXPECT_TRUE(ids->empty());
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  ASSERT_EQ(go->final_type, wire::kAck);
  EXPECT_EQ(c->command(wire::kBlockStatus, 0, 4096), wire::kEinval);
}

// SET_META_CONTEXT with several queries: the (id, name) pairs returned, or
// nullopt plus the error type in *error.
std::optional<std::vector<std::pair<uint32_t, std::string>>> set_contexts(
    RawClient& c, std::string_view name, const std::vector<std::string>& queries,
    uint32_t* error = nullptr) {
  Bytes p;
  p.u32(static_cast<uint32_t>(name.size())).str(name).u32(static_cast<uint32_t>(queries.size()));
  for (const std::string& q : queries) p.u32(static_cast<uint32_t>(q.size())).str(q);
  if (!c.send_option(wire::kSetMetaContext, p)) return std::nullopt;
  std::vector<std::pair<uint32_t, std::string>> out;
  for (;;) {
    auto r = c.read_option_reply();
    if (!r) return std::nullopt;
    if (r->type == wire::kAck) return out;
    if (r->type != wire::kMetaContext || r->data.size() < 4) {
      if (error) *error = r->type;
      return std::nullopt;
    }
    out.emplace_back(be32(r->data.data()), r->data.substr(4));
  }
}

// The chunks of one BLOCK_STATUS reply, up to DONE, as context id ->
// descriptors.
std::map<uint32_t, std::vector<std::pair<uint32_t, uint32_t>>> block_status(
    RawClient& c, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  std::map<uint32_t, std::vector<std::pair<uint32_t, uint32_t>>> out;
  if (!c.send_request(flags, wire::kBlockStatus, 42, offset, length)) return out;
  for (;;) {
    auto r = c.read_reply();
    if (!r || !r->structured) {
      ADD_FAILURE() << "no structured reply";
      return out;
    }
    EXPECT_EQ(r->chunk.type, wire::kBlockStatusChunk);
    EXPECT_EQ(r->chunk.handle, 42u);
    const std::string& p = r->chunk.payload;
    if (p.size() >= 4) {
      uint32_t id = be32(p.data());
      EXPECT_EQ(out.count(id), 0u) << "one chunk per context";
      auto& d = out[id];
      for (size_t pos = 4; pos + 8 <= p.size(); pos += 8) {
        d.emplace_back(be32(p.data() + pos), be32(p.data() + pos + 4));
      }
    }
    if (r->chunk.flags & 1) return out;
  }
}

TEST_F(HandshakeTest, SetSeveralContextsNamesThemAsAskedWithStableIds) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  using Pairs = std::vector<std::pair<uint32_t, std::string>>;
  auto first = set_contexts(*c, "origin",
                            {"memory:stripes:4096", "base:allocation", "memory:stripes:0",
                             "x-other:thing", "memory:stripes:04096", "memory:stripes:4096",
                             "memory:stripes:", "base:"});
  ASSERT_TRUE(first);
  ASSERT_EQ(first->size(), 3u) << "unknown, invalid and family queries select nothing";
  EXPECT_EQ((*first)[0].second, "memory:stripes:4096");
  EXPECT_EQ((*first)[1], (std::pair<uint32_t, std::string>{1, "base:allocation"}));
  EXPECT_EQ((*first)[2].second, "memory:stripes:04096") << "the name exactly as the client sent it";
  uint32_t id_4096 = (*first)[0].first, id_04096 = (*first)[2].first;
  EXPECT_NE(id_4096, 0u);
  EXPECT_NE(id_4096, 1u);
  EXPECT_NE(id_04096, 0u);
  EXPECT_NE(id_04096, 1u);
  EXPECT_NE(id_4096, id_04096);

  // A later SET replaces the selection; known names keep their ids.
  auto second = set_contexts(*c, "origin", {"memory:stripes:65536", "memory:stripes:04096"});
  ASSERT_TRUE(second);
  ASSERT_EQ(second->size(), 2u);
  EXPECT_EQ((*second)[1], (std::pair<uint32_t, std::string>{id_04096, "memory:stripes:04096"}));
  uint32_t id_65536 = (*second)[0].first;
  EXPECT_NE(id_65536, 0u);
  EXPECT_NE(id_65536, 1u);
  EXPECT_NE(id_65536, id_4096);
  EXPECT_NE(id_65536, id_04096);
  EXPECT_EQ(set_contexts(*c, "origin", {"memory:stripes:4096"}), (Pairs{{id_4096, "memory:stripes:4096"}}));
  second = set_contexts(*c, "origin", {"memory:stripes:65536", "memory:stripes:04096"});
  ASSERT_TRUE(second);

  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  ASSERT_EQ(go->final_type, wire::kAck);
  using D = std::vector<std::pair<uint32_t, uint32_t>>;
  auto map = block_status(*c, 4096, 3 * 4096);
  EXPECT_EQ(map.size(), 2u) << "only the last selection";
  EXPECT_EQ(map[id_04096], (D{{4096, 1}, {4096, 0}, {4096, 1}}));
  EXPECT_EQ(map[id_65536], (D{{12288, 0}}));
  map = block_status(*c, 4096, 3 * 4096, wire::kReqOne);
  EXPECT_EQ(map[id_04096], (D{{4096, 1}}));
  EXPECT_EQ(map[id_65536], (D{{12288, 0}}));
  map = block_status(*c, kOriginSize - 4096, 4096);
  EXPECT_EQ(map[id_04096], (D{{4096, 1}}));
  EXPECT_EQ(map[id_65536], (D{{4096, 1}})) << "clipped at the end of the export";
  expect_server_healthy();
}

TEST_F(HandshakeTest, SetMetaContextOfUnknownContextsSelectsNothing) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  using Pairs = std::vector<std::pair<uint32_t, std::string>>;
  EXPECT_EQ(set_contexts(*c, "origin", {"memory:stripes:0", "memory:nothing", "x-y:z"}), Pairs{});
  EXPECT_EQ(set_contexts(*c, "origin", {}), Pairs{}) << "no query selects nothing";
  uint32_t error = 0;
  EXPECT_FALSE(set_contexts(*c, "missing", {"memory:stripes:1"}, &error));
  EXPECT_EQ(error, wire::kErrUnknown);
  EXPECT_FALSE(set_contexts(*c, "origin", {"memory:stripes:1", "nocolon"}, &error));
  EXPECT_EQ(error, wire::kErrInvalid);
  auto go = c->info(wire::kGo, "origin");
  ASSERT_TRUE(go);
  ASSERT_EQ(go->final_type, wire::kAck);
  EXPECT_EQ(c->command(wire::kBlockStatus, 0, 4096), wire::kEinval) << "nothing was selected";
}

TEST_F(HandshakeTest, SetMetaContextOfTooManyContextsIsTooBig) {
  auto c = connect();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->structured_replies());
  std::vector<std::string> queries;
  for (int i = 1; i <= 17; ++i) queries.push_back("memory:stripes:" + std::to_string(i));
  uint32_t error = 0;
  EXPECT_FALSE(set_contexts(*c, "origin", queries, &error));
  EXPECT_EQ(error, wire::kErrTooBig);
  queries.pop_back();
  auto ok = set_contexts(*c, "origin", queries);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->size(), 16u);
}

TEST_F(HandshakeTest, ManyOptionsInOneWrite) {
  auto c = connect();
  ASSERT_TRUE(c->read_greeting());
  Bytes all;
  all.u32(3);
  for (int i = 0; i < 50; ++i) all.u64(wire::kIHaveOpt).u32(wire::kStructuredReply).u32(0);
  all.u64(wire::kIHaveOpt).u32(wire::kList).u32(0);
  ASSERT_TRUE(c->send(all));
  for (int i = 0; i < 50; ++i) {
    auto r = c->read_option_reply();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->type, wire::kAck);
  }
  int servers = 0;
  for (;;) {
    auto r = c->read_option_reply();
    ASSERT_TRUE(r);
    if (r->type == wire::kAck) break;
    ++servers;
  }
  EXPECT_EQ(servers, 3);
}

}  // namespace
}  // namespace multisnap::nbd::testing
