#include "nbd/raw_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace multisnap::nbd::testing {
namespace {

constexpr int kTimeoutSeconds = 10;

void set_timeouts(int fd) {
  timeval tv{kTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

}  // namespace

Bytes& Bytes::u8(uint8_t v) {
  return raw(&v, 1);
}
Bytes& Bytes::u16(uint16_t v) {
  uint8_t b[2] = {uint8_t(v >> 8), uint8_t(v)};
  return raw(b, 2);
}
Bytes& Bytes::u32(uint32_t v) {
  return u16(uint16_t(v >> 16)).u16(uint16_t(v));
}
Bytes& Bytes::u64(uint64_t v) {
  return u32(uint32_t(v >> 32)).u32(uint32_t(v));
}
Bytes& Bytes::str(std::string_view s) {
  return raw(s.data(), s.size());
}
Bytes& Bytes::raw(const void* p, size_t n) {
  auto* b = static_cast<const uint8_t*>(p);
  data_.insert(data_.end(), b, b + n);
  return *this;
}
Bytes& Bytes::zeros(size_t n) {
  data_.insert(data_.end(), n, 0);
  return *this;
}

uint16_t be16(const void* p) {
  auto* b = static_cast<const uint8_t*>(p);
  return uint16_t(b[0] << 8 | b[1]);
}
uint32_t be32(const void* p) {
  auto* b = static_cast<const uint8_t*>(p);
  return uint32_t(be16(b)) << 16 | be16(b + 2);
}
uint64_t be64(const void* p) {
  auto* b = static_cast<const uint8_t*>(p);
  return uint64_t(be32(b)) << 32 | be32(b + 4);
}

// ---- Connection

RawClient::RawClient(int fd) : fd_(fd) {
  set_timeouts(fd);
}
RawClient::~RawClient() {
  close();
}

std::unique_ptr<RawClient> RawClient::connect_unix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<RawClient>(new RawClient(fd));
}

std::unique_ptr<RawClient> RawClient::connect_tcp(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<RawClient>(new RawClient(fd));
}

bool RawClient::send(const void* p, size_t n) {
  auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    ssize_t k = ::send(fd_, b, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    b += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool RawClient::recv_exact(void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    ssize_t k = ::recv(fd_, b, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    b += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

std::optional<std::string> RawClient::recv_bytes(size_t n) {
  std::string s(n, '\0');
  if (!recv_exact(s.data(), n)) return std::nullopt;
  return s;
}

bool RawClient::closed_by_server() {
  char buf[4096];
  for (;;) {
    ssize_t k = ::recv(fd_, buf, sizeof buf, 0);
    if (k > 0) continue;
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) return true;
    return errno == ECONNRESET || errno == EPIPE;  // not a timeout
  }
}

void RawClient::shutdown_write() {
  ::shutdown(fd_, SHUT_WR);
}

void RawClient::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

// ---- Handshake

std::optional<uint16_t> RawClient::read_greeting() {
  uint8_t b[18];
  if (!recv_exact(b, sizeof b)) return std::nullopt;
  if (be64(b) != wire::kNbdMagic || be64(b + 8) != wire::kIHaveOpt) return std::nullopt;
  return be16(b + 16);
}

bool RawClient::handshake(uint32_t client_flags) {
  return read_greeting().has_value() && send(Bytes().u32(client_flags));
}

bool RawClient::send_option(uint32_t option, const Bytes& payload) {
  Bytes b;
  b.u64(wire::kIHaveOpt).u32(option).u32(static_cast<uint32_t>(payload.size()));
  b.raw(payload.data().data(), payload.size());
  return send(b);
}

std::optional<OptionReply> RawClient::read_option_reply() {
  uint8_t h[20];
  if (!recv_exact(h, sizeof h)) return std::nullopt;
  OptionReply r{be64(h), be32(h + 8), be32(h + 12), {}};
  auto data = recv_bytes(be32(h + 16));
  if (!data) return std::nullopt;
  r.data = *data;
  return r;
}

std::optional<InfoReplies> RawClient::info(uint32_t option, std::string_view name,
                                           const std::vector<uint16_t>& items) {
  Bytes payload;
  payload.u32(static_cast<uint32_t>(name.size()))
      .str(name)
      .u16(static_cast<uint16_t>(items.size()));
  for (uint16_t item : items) payload.u16(item);
  if (!send_option(option, payload)) return std::nullopt;
  InfoReplies out;
  for (;;) {
    auto r = read_option_reply();
    if (!r || r->magic != wire::kOptReplyMagic || r->option != option) return std::nullopt;
    if (r->type != wire::kInfoReply) {
      out.final_type = r->type;
      out.final_data = r->data;
      return out;
    }
    if (r->data.size() < 2) return std::nullopt;
    const char* d = r->data.data();
    switch (be16(d)) {
      case wire::kInfoExport:
        if (r->data.size() != 12) return std::nullopt;
        out.has_export = true;
        out.size = be64(d + 2);
        out.flags = be16(d + 10);
        break;
      case wire::kInfoBlockSize:
        if (r->data.size() != 14) return std::nullopt;
        out.has_block_size = true;
        out.min_block = be32(d + 2);
        out.preferred_block = be32(d + 6);
        out.max_block = be32(d + 10);
        break;
      case wire::kInfoName: out.name = r->data.substr(2); break;
      case wire::kInfoDescription: out.description = r->data.substr(2); break;
      default: break;
    }
  }
}

bool RawClient::structured_replies() {
  if (!send_option(wire::kStructuredReply)) return false;
  auto r = read_option_reply();
  structured_ = r && r->type == wire::kAck;
  return structured_;
}

std::optional<std::vector<uint32_t>> RawClient::set_meta_context(std::string_view name,
                                                                 std::string_view query) {
  Bytes p;
  p.u32(static_cast<uint32_t>(name.size())).str(name).u32(1);
  p.u32(static_cast<uint32_t>(query.size())).str(query);
  if (!send_option(wire::kSetMetaContext, p)) return std::nullopt;
  std::vector<uint32_t> ids;
  for (;;) {
    auto r = read_option_reply();
    if (!r) return std::nullopt;
    if (r->type == wire::kAck) return ids;
    if (r->type != wire::kMetaContext || r->data.size() < 4) return std::nullopt;
    ids.push_back(be32(r->data.data()));
  }
}

std::optional<uint16_t> RawClient::open(std::string_view name, bool structured, bool meta) {
  if (!handshake()) return std::nullopt;
  if (structured && !structured_replies()) return std::nullopt;
  if (meta) {
    auto ids = set_meta_context(name, "base:allocation");
    if (!ids || ids->size() != 1) return std::nullopt;
  }
  auto go = info(wire::kGo, name, {wire::kInfoBlockSize});
  if (!go || go->final_type != wire::kAck || !go->has_export) return std::nullopt;
  return go->flags;
}

// ---- Transmission

bool RawClient::send_request(uint16_t flags, uint16_t type, uint64_t handle, uint64_t offset,
                             uint32_t length, const void* payload) {
  Bytes b;
  b.u32(wire::kRequestMagic).u16(flags).u16(type).u64(handle).u64(offset).u32(length);
  if (payload != nullptr) b.raw(payload, length);
  return send(b);
}

std::optional<AnyReply> RawClient::read_reply(uint32_t read_length) {
  uint8_t magic[4];
  if (!recv_exact(magic, 4)) return std::nullopt;
  AnyReply r;
  if (be32(magic) == wire::kSimpleMagic) {
    uint8_t rest[12];
    if (!recv_exact(rest, 12)) return std::nullopt;
    r.simple = {wire::kSimpleMagic, be32(rest), be64(rest + 4)};
    if (r.simple.error == 0 && read_length > 0) {
      auto data = recv_bytes(read_length);
      if (!data) return std::nullopt;
      r.data = *data;
    }
    return r;
  }
  if (be32(magic) != wire::kStructuredMagic) return std::nullopt;
  uint8_t rest[16];
  if (!recv_exact(rest, 16)) return std::nullopt;
  r.structured = true;
  r.chunk = {wire::kStructuredMagic, be16(rest), be16(rest + 2), be64(rest + 4), {}};
  auto payload = recv_bytes(be32(rest + 12));
  if (!payload) return std::nullopt;
  r.chunk.payload = *payload;
  return r;
}

std::optional<uint32_t> RawClient::reply_error(uint64_t handle, uint32_t read_length,
                                               std::string* data) {
  uint32_t error = 0;
  for (;;) {
    auto r = read_reply(read_length);
    if (!r) return std::nullopt;
    if (!r->structured) {
      if (r->simple.handle != handle) return std::nullopt;
      if (data) *data = r->data;
      return r->simple.error;
    }
    const Chunk& c = r->chunk;
    if (c.handle != handle) return std::nullopt;
    if (c.type == wire::kError && c.payload.size() >= 6) error = be32(c.payload.data());
    if (c.type == wire::kOffsetData && data) data->append(c.payload.substr(8));
    if (c.flags & 1) return error;
  }
}

std::optional<uint32_t> RawClient::command(uint16_t type, uint64_t offset, uint32_t length,
                                           uint16_t flags, const void* payload, std::string* data) {
  uint64_t handle = next_handle_++;
  if (!send_request(flags, type, handle, offset, length, payload)) return std::nullopt;
  return reply_error(handle, type == wire::kRead ? length : 0, data);
}

}  // namespace multisnap::nbd::testing
