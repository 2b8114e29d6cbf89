// A deliberately small NBD client over plain sockets, with its own encoder,
// for tests that must send exactly the bytes they want (malformed ones too).
// It shares no code with the server's protocol implementation. Every receive
// times out after a few seconds, so a missing reply fails a test instead of
// hanging it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace multisnap::nbd::testing {

// NBD numbers, written out again here on purpose (not nbd/protocol.h): the
// tests check the server against the spec, not against itself.
namespace wire {
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;
inline constexpr uint64_t kIHaveOpt = 0x49484156454f5054ull;
inline constexpr uint64_t kOptReplyMagic = 0x3e889045565a9ull;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleMagic = 0x67446698;
inline constexpr uint32_t kStructuredMagic = 0x668e33ef;
enum Option : uint32_t {
  kExportName = 1,
  kAbort = 2,
  kList = 3,
  kStartTls = 5,
  kInfo = 6,
  kGo = 7,
  kStructuredReply = 8,
  kListMetaContext = 9,
  kSetMetaContext = 10,
};
enum Reply : uint32_t {
  kAck = 1,
  kServer = 2,
  kInfoReply = 3,
  kMetaContext = 4,
  kErrUnsup = 0x80000001u,
  kErrPolicy = 0x80000002u,
  kErrInvalid = 0x80000003u,
  kErrPlatform = 0x80000004u,
  kErrUnknown = 0x80000006u,
  kErrTooBig = 0x80000009u,
};
enum Info : uint16_t { kInfoExport = 0, kInfoName = 1, kInfoDescription = 2, kInfoBlockSize = 3 };
enum Command : uint16_t {
  kRead = 0,
  kWrite = 1,
  kDisc = 2,
  kFlush = 3,
  kTrim = 4,
  kCache = 5,
  kWriteZeroes = 6,
  kBlockStatus = 7,
};
enum CommandFlag : uint16_t { kFua = 1, kNoHole = 2, kDf = 4, kReqOne = 8, kFastZero = 16 };
enum TransmissionFlag : uint16_t {
  kHasFlags = 1,
  kReadOnly = 2,
  kSendFlush = 4,
  kSendFua = 8,
  kSendTrim = 32,
  kSendWriteZeroes = 64,
  kSendDf = 128,
  kCanMultiConn = 256,
  kSendCache = 1024,
  kSendFastZero = 2048,
};
enum ChunkType : uint16_t { kNone = 0, kOffsetData = 1, kBlockStatusChunk = 5, kError = 0x8001 };
inline constexpr uint32_t kEperm = 1, kEio = 5, kEinval = 22, kEnospc = 28, kEnotsup = 95;
}  // namespace wire

// Big-endian message builder.
class Bytes {
 public:
  Bytes& u8(uint8_t v);
  Bytes& u16(uint16_t v);
  Bytes& u32(uint32_t v);
  Bytes& u64(uint64_t v);
  Bytes& str(std::string_view s);
  Bytes& raw(const void* p, size_t n);
  Bytes& zeros(size_t n);
  const std::vector<uint8_t>& data() const { return data_; }
  size_t size() const { return data_.size(); }

 private:
  std::vector<uint8_t> data_;
};

uint16_t be16(const void* p);
uint32_t be32(const void* p);
uint64_t be64(const void* p);

struct OptionReply {
  uint64_t magic = 0;
  uint32_t option = 0;
  uint32_t type = 0;
  std::string data;
};

// The replies to one NBD_OPT_INFO / NBD_OPT_GO, up to the final one.
struct InfoReplies {
  uint32_t final_type = 0;  // wire::kAck or an error
  std::string final_data;
  bool has_export = false;
  uint64_t size = 0;
  uint16_t flags = 0;
  bool has_block_size = false;
  uint32_t min_block = 0, preferred_block = 0, max_block = 0;
  std::optional<std::string> name;
  std::optional<std::string> description;
};

struct SimpleReply {
  uint32_t magic = 0;
  uint32_t error = 0;
  uint64_t handle = 0;
};

struct Chunk {
  uint32_t magic = 0;
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  std::string payload;
};

// One reply of either kind; for a simple READ reply, `data` holds the bytes.
struct AnyReply {
  bool structured = false;
  SimpleReply simple;
  Chunk chunk;
  std::string data;
};

class RawClient {
 public:
  static std::unique_ptr<RawClient> connect_unix(const std::string& path);
  static std::unique_ptr<RawClient> connect_tcp(uint16_t port);
  ~RawClient();

  bool send(const Bytes& b) { return send(b.data().data(), b.size()); }
  bool send(const void* p, size_t n);
  bool recv_exact(void* p, size_t n);
  std::optional<std::string> recv_bytes(size_t n);
  // True when the server closes the connection within the timeout, after
  // any bytes it still sends (which are discarded).
  bool closed_by_server();
  void shutdown_write();
  void close();

  // ---- Handshake
  std::optional<uint16_t> read_greeting();  // handshake flags
  // Greeting plus client flags.
  bool handshake(uint32_t client_flags = 3);
  bool send_option(uint32_t option, const Bytes& payload = {});
  std::optional<OptionReply> read_option_reply();
  // Sends INFO or GO for `name` asking for `items`; reads to the final reply.
  std::optional<InfoReplies> info(uint32_t option, std::string_view name,
                                  const std::vector<uint16_t>& items = {});
  // STRUCTURED_REPLY, expecting ACK.
  bool structured_replies();
  // SET_META_CONTEXT for one query; the context ids the server returned.
  std::optional<std::vector<uint32_t>> set_meta_context(std::string_view name,
                                                        std::string_view query);
  // Handshake, optional structured replies and base:allocation, then GO.
  // Returns the transmission flags; nullopt on any failure.
  std::optional<uint16_t> open(std::string_view name, bool structured, bool meta = false);

  // ---- Transmission
  bool send_request(uint16_t flags, uint16_t type, uint64_t handle, uint64_t offset,
                    uint32_t length, const void* payload = nullptr);
  // Reads one reply; `read_length` is the data that follows a successful
  // simple reply to a READ (0 for other commands).
  std::optional<AnyReply> read_reply(uint32_t read_length = 0);
  // Error of a whole reply: simple reply error, or the error of an error
  // chunk (reading chunks until the DONE flag). Data chunks are collected
  // into *data when given.
  std::optional<uint32_t> reply_error(uint64_t handle, uint32_t read_length = 0,
                                      std::string* data = nullptr);

  // Convenience: one request, its reply error (nullopt if the stream broke).
  std::optional<uint32_t> command(uint16_t type, uint64_t offset, uint32_t length,
                                  uint16_t flags = 0, const void* payload = nullptr,
                                  std::string* data = nullptr);
  void set_structured(bool on) { structured_ = on; }

 private:
  explicit RawClient(int fd);
  int fd_;
  bool structured_ = false;
  uint64_t next_handle_ = 1;
};

}  // namespace multisnap::nbd::testing
