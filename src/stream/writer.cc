#include "stream/writer.h"

#include <zstd.h>

#include <cstring>

#include "util/endian.h"

namespace multisnap::stream {

bool all_zero(const uint8_t* p, size_t n) {
  // Word at a time; the tail byte by byte.
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    if (load_le<uint64_t>(p + i) != 0) return false;
  for (; i < n; ++i)
    if (p[i]) return false;
  return true;
}

StreamWriter::StreamWriter(Sink sink, bool compress) : sink_(std::move(sink)), compress_(compress) {
  if (compress_) zctx_ = ZSTD_createCCtx();
}

StreamWriter::~StreamWriter() {
  if (zctx_) ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(zctx_));
}

Status StreamWriter::put(const uint8_t* p, size_t n) {
  bytes_ += n;
  return sink_(p, n);
}

Status StreamWriter::record(RecordType type, uint32_t flags, std::initializer_list<Piece> payload) {
  size_t len = 0;
  for (const Piece& p : payload) len += p.len;
  uint8_t h[kRecordHeaderSize];
  store_le(h, static_cast<uint32_t>(type));
  store_le(h + 4, flags);
  store_le(h + 8, seq_);
  store_le(h + 16, static_cast<uint32_t>(len));
  store_le(h + 20, uint32_t{0});
  one_.reset(kRecordSeed);
  one_.update(h, sizeof h);
  for (const Piece& p : payload) one_.update(p.data, p.len);
  uint8_t sum[kRecordTrailerSize];
  store_le(sum, one_.digest());
  const bool counted = type != RecordType::kEnd;
  auto put_piece = [&](const uint8_t* p, size_t n) -> Status {
    if (counted) whole_.update(p, n);
    return put(p, n);
  };
  MS_TRY(put_piece(h, sizeof h));
  for (const Piece& p : payload) MS_TRY(put_piece(p.data, p.len));
  MS_TRY(put_piece(sum, sizeof sum));
  if (counted) ++trailer_.records;
  ++seq_;
  return Status::ok();
}

Status StreamWriter::header(const Header& h) {
  std::vector<uint8_t> p(kHeaderFixedSize + h.target_name.size(), 0);
  std::memcpy(p.data(), kMagic, 8);
  store_le(p.data() + 8, kVersion);
  store_le(p.data() + 12, h.flags | (compress_ ? kHeaderCompressed : 0));
  store_le(p.data() + 16, h.volume_size);
  store_le(p.data() + 24, h.chunk_size);
  store_le(p.data() + 28, static_cast<uint32_t>(h.target_name.size()));
  std::memcpy(p.data() + 32, h.source_store.bytes.data(), 16);
  std::memcpy(p.data() + 48, h.base.bytes.data(), 16);
  std::memcpy(p.data() + 64, h.target.bytes.data(), 16);
  store_le(p.data() + 80, h.target_created_ns);
  store_le(p.data() + 88, h.base_id);
  store_le(p.data() + 92, h.target_id);
  std::memcpy(p.data() + kHeaderFixedSize, h.target_name.data(), h.target_name.size());
  return record(RecordType::kHeader, 0, {{p.data(), p.size()}});
}

Status StreamWriter::data(uint64_t offset, const uint8_t* buf, uint32_t len) {
  if (len == 0) return Status::ok();
  if (offset < next_offset_)
    return make_error(Code::kInvalidArgument, "stream extents must not go backwards ({} < {})", offset, next_offset_);
  if (all_zero(buf, len)) return zero(offset, len);
  // Split what is larger than a record may hold.
  while (len > kMaxDataLength) {
    MS_TRY(data(offset, buf, kMaxDataLength));
    offset += kMaxDataLength;
    buf += kMaxDataLength;
    len -= kMaxDataLength;
  }
  Encoding enc = Encoding::kRaw;
  const uint8_t* body = buf;
  size_t body_len = len;
  if (compress_) {
    zbuf_.resize(ZSTD_compressBound(len));
    size_t n = ZSTD_compressCCtx(static_cast<ZSTD_CCtx*>(zctx_), zbuf_.data(), zbuf_.size(), buf, len, 1);
    if (!ZSTD_isError(n) && n < len) {
      enc = Encoding::kZstd;
      body = zbuf_.data();
      body_len = n;
    }
  }
  uint8_t p[16];
  store_le(p, offset);
  store_le(p + 8, len);
  store_le(p + 12, static_cast<uint32_t>(enc));
  trailer_.data_bytes += len;
  next_offset_ = offset + len;
  return record(RecordType::kData, 0, {{p, sizeof p}, {body, body_len}});
}

Status StreamWriter::zero(uint64_t offset, uint64_t len) {
  if (len == 0) return Status::ok();
  if (offset < next_offset_)
    return make_error(Code::kInvalidArgument, "stream extents must not go backwards ({} < {})", offset, next_offset_);
  uint8_t p[16];
  store_le(p, offset);
  store_le(p + 8, len);
  trailer_.zero_bytes += len;
  next_offset_ = offset + len;
  return record(RecordType::kZero, 0, {{p, sizeof p}});
}

Status StreamWriter::finish() {
  uint8_t p[32];
  store_le(p, trailer_.records);
  store_le(p + 8, trailer_.data_bytes);
  store_le(p + 16, trailer_.zero_bytes);
  store_le(p + 24, whole_.digest());
  return record(RecordType::kEnd, 0, {{p, sizeof p}});
}

}  // namespace multisnap::stream
