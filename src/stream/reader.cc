#include "stream/reader.h"

#include <zstd.h>

#include <cstring>

#include "util/endian.h"

namespace multisnap::stream {

namespace {
Status corrupt(uint64_t seq, std::string_view what) {
  return make_error(Code::kCorruption, "the stream is damaged or not a multisnap stream: record {}: {}", seq, what);
}
}  // namespace

StreamReader::StreamReader(Source source) : source_(std::move(source)) {}

StreamReader::~StreamReader() {
  if (dctx_) ZSTD_freeDCtx(static_cast<ZSTD_DCtx*>(dctx_));
}

Status StreamReader::read_exact(uint8_t* p, size_t n, const char* what) {
  MS_ASSIGN_OR_RETURN(size_t got, source_(p, n));
  bytes_ += got;
  if (got < n)
    return make_error(Code::kCorruption,
                      "the stream is truncated: it ends inside {} of record {} (after {} bytes; a complete stream "
                      "ends with an END record)",
                      what, seq_, bytes_);
  return Status::ok();
}

Result<StreamReader::Raw> StreamReader::read_record() {
  if (ended_) return make_error(Code::kInvalidArgument, "the stream has ended");
  uint8_t h[kRecordHeaderSize];
  MS_TRY(read_exact(h, sizeof h, "the header"));
  Raw raw;
  raw.type = load_le<uint32_t>(h);
  raw.flags = load_le<uint32_t>(h + 4);
  uint64_t seq = load_le<uint64_t>(h + 8);
  uint32_t len = load_le<uint32_t>(h + 16);
  if (len > kMaxPayload)
    return corrupt(seq_, fmt::format("payload length {} is over the limit of {}", len, kMaxPayload));
  record_.resize(kRecordHeaderSize + len + kRecordTrailerSize);
  std::memcpy(record_.data(), h, sizeof h);
  MS_TRY(read_exact(record_.data() + kRecordHeaderSize, len + kRecordTrailerSize, "the payload"));
  uint64_t sum = load_le<uint64_t>(record_.data() + kRecordHeaderSize + len);
  if (sum != checksum64(record_.data(), kRecordHeaderSize + len, kRecordSeed))
    return corrupt(seq_, "checksum mismatch");
  if (seq != seq_)
    return corrupt(seq_, fmt::format("sequence number {} where {} was due (records reordered, lost or repeated)",
                                     seq, seq_));
  if (load_le<uint32_t>(h + 20) != 0) return corrupt(seq_, "reserved header bytes are not zero");
  whole_before_record_ = whole_.digest();
  if (raw.type != static_cast<uint32_t>(RecordType::kEnd)) {
    whole_.update(record_.data(), record_.size());
    ++counted_.records;
  }
  ++seq_;
  return raw;
}

Result<Header> StreamReader::header() {
  if (have_header_) return header_;
  MS_ASSIGN_OR_RETURN(Raw raw, read_record());
  const uint8_t* p = record_.data() + kRecordHeaderSize;
  size_t len = record_.size() - kRecordHeaderSize - kRecordTrailerSize;
  if (raw.type != static_cast<uint32_t>(RecordType::kHeader) || len < 16 || std::memcmp(p, kMagic, 8) != 0)
    return make_error(Code::kCorruption, "this is not a multisnap stream (no stream header at its start)");
  uint32_t version = load_le<uint32_t>(p + 8);
  if (version != kVersion)
    return make_error(Code::kNotSupported, "the stream has version {}; this multisnap reads version {}", version,
                      kVersion);
  if (len < kHeaderFixedSize) return corrupt(0, "the stream header is too short");
  Header& hd = header_;
  hd.flags = load_le<uint32_t>(p + 12);
  hd.volume_size = load_le<uint64_t>(p + 16);
  hd.chunk_size = load_le<uint32_t>(p + 24);
  uint32_t name_len = load_le<uint32_t>(p + 28);
  std::memcpy(hd.source_store.bytes.data(), p + 32, 16);
  std::memcpy(hd.base.bytes.data(), p + 48, 16);
  std::memcpy(hd.target.bytes.data(), p + 64, 16);
  hd.target_created_ns = load_le<uint64_t>(p + 80);
  hd.base_id = load_le<uint32_t>(p + 88);
  hd.target_id = load_le<uint32_t>(p + 92);
  if (name_len > 64 || kHeaderFixedSize + name_len > len) return corrupt(0, "the snapshot name length is impossible");
  hd.target_name.assign(reinterpret_cast<const char*>(p + kHeaderFixedSize), name_len);
  if (hd.volume_size == 0) return corrupt(0, "the volume size is zero");
  if (hd.target.is_nil()) return corrupt(0, "the target snapshot has no uuid");
  if (hd.target == hd.base) return corrupt(0, "the base and the target are the same snapshot");
  have_header_ = true;
  return header_;
}

Result<Item> StreamReader::next() {
  if (!have_header_) MS_TRY(header().status());
  for (;;) {
    MS_ASSIGN_OR_RETURN(Raw raw, read_record());
    const uint64_t seq = seq_ - 1;
    const uint8_t* p = record_.data() + kRecordHeaderSize;
    const size_t len = record_.size() - kRecordHeaderSize - kRecordTrailerSize;
    auto check_extent = [&](uint64_t off, uint64_t n) -> Status {
      if (n == 0) return corrupt(seq, "an empty extent");
      if (off < next_offset_)
        return corrupt(seq, fmt::format("extent at {} starts before the end of the previous one ({})", off,
                                        next_offset_));
      if (off > header_.volume_size || n > header_.volume_size - off)
        return corrupt(seq, fmt::format("extent [{}, +{}) reaches past the end of the volume ({})", off, n,
                                        header_.volume_size));
      if (header_.full() && off != next_offset_)
        return corrupt(seq, fmt::format("a full stream leaves [{}, {}) undefined", next_offset_, off));
      next_offset_ = off + n;
      return Status::ok();
    };
    switch (static_cast<RecordType>(raw.type)) {
      case RecordType::kData: {
        if (len < 16) return corrupt(seq, "DATA record too short");
        uint64_t off = load_le<uint64_t>(p);
        uint32_t n = load_le<uint32_t>(p + 8);
        uint32_t enc = load_le<uint32_t>(p + 12);
        if (n > kMaxDataLength) return corrupt(seq, fmt::format("DATA extent of {} bytes is over the limit", n));
        const uint8_t* body = p + 16;
        size_t body_len = len - 16;
        if (enc == static_cast<uint32_t>(Encoding::kRaw)) {
          if (body_len != n) return corrupt(seq, "DATA length does not match its payload");
        } else if (enc == static_cast<uint32_t>(Encoding::kZstd)) {
          if (!dctx_) dctx_ = ZSTD_createDCtx();
          plain_.resize(n);
          size_t got = ZSTD_decompressDCtx(static_cast<ZSTD_DCtx*>(dctx_), plain_.data(), n, body, body_len);
          if (ZSTD_isError(got) || got != n) return corrupt(seq, "compressed DATA does not decompress to its length");
          body = plain_.data();
        } else {
          return corrupt(seq, fmt::format("unknown DATA encoding {}", enc));
        }
        MS_TRY(check_extent(off, n));
        counted_.data_bytes += n;
        last_data_owner_ = body == plain_.data() ? &plain_ : &record_;
        return Item{DataExtent{off, body, n}};
      }
      case RecordType::kZero: {
        if (len != 16) return corrupt(seq, "ZERO record has the wrong size");
        uint64_t off = load_le<uint64_t>(p), n = load_le<uint64_t>(p + 8);
        MS_TRY(check_extent(off, n));
        counted_.zero_bytes += n;
        return Item{ZeroExtent{off, n}};
      }
      case RecordType::kEnd: {
        if (len != 32) return corrupt(seq, "END record has the wrong size");
        Trailer t{load_le<uint64_t>(p), load_le<uint64_t>(p + 8), load_le<uint64_t>(p + 16),
                  load_le<uint64_t>(p + 24)};
        if (t.records != counted_.records)
          return corrupt(seq, fmt::format("END counts {} records but the stream had {}", t.records, counted_.records));
        if (t.data_bytes != counted_.data_bytes || t.zero_bytes != counted_.zero_bytes)
          return corrupt(seq, "END's byte counts do not match the records");
        if (t.stream_checksum != whole_before_record_) return corrupt(seq, "the whole-stream checksum does not match");
        if (header_.full() && next_offset_ != header_.volume_size)
          return corrupt(seq, fmt::format("a full stream ends at {}, before the end of the volume ({})", next_offset_,
                                          header_.volume_size));
        uint8_t extra;
        MS_ASSIGN_OR_RETURN(size_t more, source_(&extra, 1));
        if (more != 0) return corrupt(seq, "bytes follow the END record");
        ended_ = true;
        return Item{End{t}};
      }
      case RecordType::kHeader: return corrupt(seq, "a second stream header");
      default:
        if (raw.flags & kOptional) continue;  // a newer writer's optional record
        return corrupt(seq, fmt::format("unknown record type {} that is not optional (a newer multisnap wrote it?)",
                                        raw.type));
    }
  }
}

}  // namespace multisnap::stream

namespace multisnap::stream {

void CoverageScanner::feed(const uint8_t* p, size_t n) {
  while (n > 0) {
    if (skip_ > 0) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(skip_, n));
      p += k;
      n -= k;
      skip_ -= k;
      continue;
    }
    size_t k = std::min(n, sizeof head_ - have_);
    std::memcpy(head_ + have_, p, k);
    have_ += k;
    p += k;
    n -= k;
    if (have_ < sizeof head_) continue;
    uint32_t type = load_le<uint32_t>(head_);
    uint64_t len = load_le<uint32_t>(head_ + 16);
    if (type == static_cast<uint32_t>(RecordType::kData) && len >= 16) covered_ += load_le<uint32_t>(head_ + 32);
    if (type == static_cast<uint32_t>(RecordType::kZero) && len >= 16) covered_ += load_le<uint64_t>(head_ + 32);
    // The record's rest: payload and checksum, minus what head_ took.
    uint64_t total = kRecordHeaderSize + len + kRecordTrailerSize;
    skip_ = total > sizeof head_ ? total - sizeof head_ : 0;
    // A record shorter than head_ (the END's payload is 32: never) would
    // have eaten the next one's start; streams have none.
    have_ = 0;
  }
}

}  // namespace multisnap::stream
