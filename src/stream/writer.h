// StreamWriter: encodes a replication stream (stream.h) into a byte sink.
// The caller gives extents in increasing offset order; the writer frames,
// checksums and (optionally) compresses them, and writes END on finish().
//
// Not thread-safe: one writer per stream.
#pragma once

#include <functional>
#include <memory>
#include <initializer_list>
#include <string_view>

#include "stream/stream.h"
#include "util/checksum.h"

namespace multisnap::stream {

// Receives the encoded bytes in order; an error stops the stream.
using Sink = std::function<Status(const uint8_t* data, size_t len)>;

class StreamWriter {
 public:
  StreamWriter(Sink sink, bool compress);
  ~StreamWriter();

  Status header(const Header& h);
  // Data of [offset, offset + len): a ZERO record if it is all zeros.
  Status data(uint64_t offset, const uint8_t* buf, uint32_t len);
  Status zero(uint64_t offset, uint64_t len);
  Status finish();

  uint64_t bytes_written() const { return bytes_; }
  uint64_t data_bytes() const { return trailer_.data_bytes; }
  uint64_t zero_bytes() const { return trailer_.zero_bytes; }

 private:
  struct Piece {
    const uint8_t* data;
    size_t len;
  };
  // Frames a record whose payload is the pieces, in order, without copying them.
  Status record(RecordType type, uint32_t flags, std::initializer_list<Piece> payload);
  Status put(const uint8_t* p, size_t n);

  Sink sink_;
  bool compress_;
  uint64_t seq_ = 0;
  uint64_t bytes_ = 0;
  uint64_t next_offset_ = 0;  // extents must not go backwards
  Trailer trailer_;
  StreamingChecksum64 whole_{kStreamSeed};
  StreamingChecksum64 one_{kRecordSeed};
  std::vector<uint8_t> zbuf_;
  void* zctx_ = nullptr;
};

// True if every byte is zero.
bool all_zero(const uint8_t* p, size_t n);

}  // namespace multisnap::stream
