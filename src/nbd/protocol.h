// NBD wire constants and big-endian helpers, as defined by the NBD protocol
// document (doc/proto.md in the NetworkBlockDevice/nbd repository). Every
// integer on the wire is big-endian. These numbers are fixed by the protocol:
// never renumber them.
//
// Header-only; no state.
#pragma once

#include <cstdint>
#include <cstring>

namespace multisnap::nbd::proto {

// ---- Magic numbers
inline constexpr uint64_t kInitMagic = 0x4e42444d41474943ull;    // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454f5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9ull;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// ---- Handshake flags (server, 16 bits) and client flags (32 bits)
inline constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1u << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1u << 1;

// ---- Transmission flags (16 bits)
inline constexpr uint16_t kFlagHasFlags = 1u << 0;
inline constexpr uint16_t kFlagReadOnly = 1u << 1;
inline constexpr uint16_t kFlagSendFlush = 1u << 2;
inline constexpr uint16_t kFlagSendFua = 1u << 3;
inline constexpr uint16_t kFlagRotational = 1u << 4;
inline constexpr uint16_t kFlagSendTrim = 1u << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1u << 6;
inline constexpr uint16_t kFlagSendDf = 1u << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1u << 8;
inline constexpr uint16_t kFlagSendCache = 1u << 10;
inline constexpr uint16_t kFlagSendFastZero = 1u << 11;

// ---- Options
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// ---- Option reply types
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrUnsup = 0x80000001u;
inline constexpr uint32_t kRepErrPolicy = 0x80000002u;
inline constexpr uint32_t kRepErrInvalid = 0x80000003u;
inline constexpr uint32_t kRepErrPlatform = 0x80000004u;
inline constexpr uint32_t kRepErrTlsReqd = 0x80000005u;
inline constexpr uint32_t kRepErrUnknown = 0x80000006u;
inline constexpr uint32_t kRepErrShutdown = 0x80000007u;
inline constexpr uint32_t kRepErrBlockSizeReqd = 0x80000008u;
inline constexpr uint32_t kRepErrTooBig = 0x80000009u;

// ---- NBD_INFO_* items in NBD_REP_INFO replies
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// ---- Commands
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;

// ---- Command flags
inline constexpr uint16_t kCmdFlagFua = 1u << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr uint16_t kCmdFlagDf = 1u << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1u << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1u << 4;

// ---- Structured replies
inline constexpr uint16_t kReplyFlagDone = 1u << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeOffsetHole = 2;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = 0x8001;
inline constexpr uint16_t kReplyTypeErrorOffset = 0x8002;

// ---- base:allocation status flags
inline constexpr uint32_t kStateHole = 1u << 0;
inline constexpr uint32_t kStateZero = 1u << 1;

// ---- Error values (the only ones a server may send)
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// ---- Message sizes
inline constexpr size_t kGreetingSize = 18;      // magic, magic, handshake flags
inline constexpr size_t kOptionHeaderSize = 16;  // magic, option, length
inline constexpr size_t kOptionReplyHeaderSize = 20;
inline constexpr size_t kExportNameReplySize = 10;  // size, transmission flags (+124 zeroes)
inline constexpr size_t kExportNameZeroes = 124;
inline constexpr size_t kRequestSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kStructuredHeaderSize = 20;
inline constexpr size_t kMaxStringLength = 4096;  // export names, queries, messages

inline constexpr const char* kBaseAllocation = "base:allocation";

// ---- Big-endian load/store
inline void put16(uint8_t* p, uint16_t v) {
  v = __builtin_bswap16(v);
  std::memcpy(p, &v, 2);
}
inline void put32(uint8_t* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void put64(uint8_t* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline uint16_t get16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}
inline uint32_t get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}

const char* command_name(uint16_t type);
const char* option_name(uint32_t option);

}  // namespace multisnap::nbd::proto
