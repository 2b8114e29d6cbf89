// StreamReader: decodes and verifies a replication stream (stream.h), one
// record at a time, from a byte source. Everything a record says is checked
// before it is returned: its checksum, its sequence number, that its extent
// lies inside the volume and after the previous one, and (at END) the record
// count, the byte counts, the checksum of the whole stream, and for a full
// stream that the extents covered the whole volume. Any failure is
// Code::kCorruption (or kNotSupported for a newer version) with a sentence
// saying what is wrong and at which record; nothing is returned from a
// record that failed.
//
// Not thread-safe: one reader per stream.
#pragma once

#include <functional>
#include <variant>

#include "stream/stream.h"
#include "util/checksum.h"

namespace multisnap::stream {

// Reads exactly `len` bytes into buf; returns the number read (less than
// len only at the end of the input).
using Source = std::function<Result<size_t>(uint8_t* buf, size_t len)>;

struct DataExtent {
  uint64_t offset = 0;
  const uint8_t* data = nullptr;  // valid until the next call of next()
  uint32_t length = 0;
};
struct ZeroExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
};
struct End {
  Trailer trailer;
};
using Item = std::variant<DataExtent, ZeroExtent, End>;

class StreamReader {
 public:
  explicit StreamReader(Source source);
  ~StreamReader();

  // Reads and checks the header (call once, first).
  Result<Header> header();
  // The next extent, or End once the trailer checked out.
  Result<Item> next();

  // Hands over the buffer the last DataExtent points into (raw records:
  // the data stays valid for as long as the caller keeps it), so a caller
  // that keeps the data need not copy it. The reader allocates a new one.
  std::vector<uint8_t> take_buffer() { return std::move(last_data_owner_ ? *last_data_owner_ : record_); }

  uint64_t bytes_read() const { return bytes_; }
  uint64_t records() const { return seq_; }

 private:
  struct Raw {
    uint32_t type = 0;
    uint32_t flags = 0;
  };
  Result<Raw> read_record();
  Status read_exact(uint8_t* p, size_t n, const char* what);

  Source source_;
  Header header_;
  bool have_header_ = false;
  bool ended_ = false;
  uint64_t seq_ = 0;
  uint64_t bytes_ = 0;
  uint64_t next_offset_ = 0;
  Trailer counted_;
  StreamingChecksum64 whole_{kStreamSeed};
  uint64_t whole_before_record_ = 0;  // checksum of everything before the current record
  std::vector<uint8_t> record_;
  std::vector<uint8_t> plain_;
  std::vector<uint8_t>* last_data_owner_ = nullptr;  // record_ or plain_
  void* dctx_ = nullptr;
};

}  // namespace multisnap::stream

namespace multisnap::stream {

// Follows a stream's framing as bytes go by, without checking anything, to
// tell how many volume bytes its DATA and ZERO records have covered so far
// (what `send --progress` counts against the volume or the changed bytes).
class CoverageScanner {
 public:
  void feed(const uint8_t* p, size_t n);
  uint64_t covered() const { return covered_; }

 private:
  uint8_t head_[kRecordHeaderSize + 16];
  size_t have_ = 0;      // bytes of head_ filled for the current record
  uint64_t skip_ = 0;    // bytes of the current record left after head_
  uint64_t covered_ = 0;
};

}  // namespace multisnap::stream
