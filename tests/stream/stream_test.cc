#include <gtest/gtest.h>

#include <random>

#include "stream/reader.h"
#include "stream/writer.h"

namespace multisnap::stream {
namespace {

constexpr uint64_t kVolume = 1 << 20;

Header make_header(bool full) {
  Header h;
  h.volume_size = kVolume;
  h.chunk_size = 65536;
  h.target.bytes[0] = 1;
  if (!full) h.base.bytes[0] = 2;
  h.source_store.bytes[0] = 3;
  h.target_name = "snap-1";
  h.target_id = 7;
  return h;
}

// A full stream of a volume: data at 0 (incompressible) and 256K (text), zeros elsewhere.
std::vector<uint8_t> make_stream(bool compress, std::vector<uint8_t>* volume, bool full = true) {
  std::vector<uint8_t> out;
  StreamWriter w([&](const uint8_t* p, size_t n) { out.insert(out.end(), p, p + n); return Status::ok(); }, compress);
  EXPECT_TRUE(w.header(make_header(full)).is_ok());
  volume->assign(kVolume, 0);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < 65536; ++i) (*volume)[i] = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < 65536; ++i) (*volume)[262144 + i] = "multisnap "[i % 10];
  EXPECT_TRUE(w.data(0, volume->data(), 65536).is_ok());
  EXPECT_TRUE(w.zero(65536, 262144 - 65536).is_ok());
  EXPECT_TRUE(w.data(262144, volume->data() + 262144, 65536).is_ok());
  // All zeros given as data: becomes a ZERO record.
  EXPECT_TRUE(w.data(327680, volume->data() + 327680, 65536).is_ok());
  EXPECT_TRUE(w.zero(393216, kVolume - 393216).is_ok());
  EXPECT_TRUE(w.finish().is_ok());
  EXPECT_EQ(w.bytes_written(), out.size());
  return out;
}

Source from(const std::vector<uint8_t>& bytes) {
  auto pos = std::make_shared<size_t>(0);
  return [&bytes, pos](uint8_t* buf, size_t len) -> Result<size_t> {
    size_t n = std::min(len, bytes.size() - *pos);
    if (n) std::memcpy(buf, bytes.data() + *pos, n);
    *pos += n;
    return n;
  };
}

// Applies a whole stream to an image; the error if the reader refused it.
Status apply_stream(const std::vector<uint8_t>& bytes, std::vector<uint8_t>* image, Header* hdr = nullptr) {
  StreamReader r(from(bytes));
  MS_ASSIGN_OR_RETURN(Header h, r.header());
  if (hdr) *hdr = h;
  image->assign(h.volume_size, 0xee);
  for (;;) {
    MS_ASSIGN_OR_RETURN(Item item, r.next());
    if (auto* d = std::get_if<DataExtent>(&item)) std::memcpy(image->data() + d->offset, d->data, d->length);
    else if (auto* z = std::get_if<ZeroExtent>(&item)) std::memset(image->data() + z->offset, 0, z->length);
    else return Status::ok();
  }
}

TEST(Stream, RoundTripRawAndCompressed) {
  for (bool compress : {false, true}) {
    std::vector<uint8_t> volume, image;
    auto bytes = make_stream(compress, &volume);
    Header h;
    ASSERT_TRUE(apply_stream(bytes, &image, &h).is_ok());
    EXPECT_EQ(image, volume);
    EXPECT_EQ(h.target_name, "snap-1");
    EXPECT_EQ(h.target_id, 7u);
    EXPECT_TRUE(h.full());
  }
  std::vector<uint8_t> v;
  // Zeros cost a record, not data; text compresses.
  EXPECT_LT(make_stream(false, &v).size(), 2 * 65536 + 1024);
  EXPECT_LT(make_stream(true, &v).size(), 65536 + 4096);
}

TEST(Stream, EveryFlippedByteIsRefused) {
  std::vector<uint8_t> volume, image;
  auto good = make_stream(true, &volume);
  for (size_t i = 0; i < good.size(); i += (i < 4096 || good.size() - i < 4096) ? 1 : 97) {
    auto bad = good;
    bad[i] ^= 0x10;
    EXPECT_FALSE(apply_stream(bad, &image).is_ok()) << "flipped byte " << i << " was accepted";
  }
}

TEST(Stream, EveryTruncationIsRefused) {
  std::vector<uint8_t> volume, image;
  auto good = make_stream(false, &volume);
  for (size_t n = 0; n < good.size(); n += (n < 256 || good.size() - n < 256) ? 1 : 61) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<long>(n));
    Status s = apply_stream(cut, &image);
    ASSERT_FALSE(s.is_ok()) << "truncated at " << n;
    EXPECT_EQ(s.code(), Code::kCorruption);
  }
  auto longer = good;
  longer.push_back(0);
  EXPECT_FALSE(apply_stream(longer, &image).is_ok()) << "trailing garbage accepted";
}

// Splits a stream into its records (header, payload, checksum each).
std::vector<std::vector<uint8_t>> records_of(const std::vector<uint8_t>& s) {
  std::vector<std::vector<uint8_t>> out;
  for (size_t pos = 0; pos < s.size();) {
    uint32_t len;
    std::memcpy(&len, s.data() + pos + 16, 4);
    size_t n = kRecordHeaderSize + len + kRecordTrailerSize;
    out.emplace_back(s.begin() + static_cast<long>(pos), s.begin() + static_cast<long>(pos + n));
    pos += n;
  }
  return out;
}

TEST(Stream, ReorderedDroppedOrRepeatedRecordsAreRefused) {
  std::vector<uint8_t> volume, image;
  auto recs = records_of(make_stream(false, &volume));
  ASSERT_GE(recs.size(), 6u);
  auto join = [](const std::vector<std::vector<uint8_t>>& rs) {
    std::vector<uint8_t> out;
    for (auto& r : rs) out.insert(out.end(), r.begin(), r.end());
    return out;
  };
  auto swapped = recs;
  std::swap(swapped[1], swapped[2]);
  EXPECT_FALSE(apply_stream(join(swapped), &image).is_ok());
  auto dropped = recs;
  dropped.erase(dropped.begin() + 2);
  EXPECT_FALSE(apply_stream(join(dropped), &image).is_ok());
  auto repeated = recs;
  repeated.insert(repeated.begin() + 2, recs[2]);
  EXPECT_FALSE(apply_stream(join(repeated), &image).is_ok());
}

TEST(Stream, ForeignAndNewerStreamsAreRefusedAtTheHeader) {
  std::vector<uint8_t> image;
  std::vector<uint8_t> junk(4096, 'x');
  Status s = apply_stream(junk, &image);
  EXPECT_EQ(s.code(), Code::kCorruption);
  std::vector<uint8_t> volume;
  auto good = make_stream(false, &volume);
  // A version-2 header with a valid checksum.
  auto recs = records_of(good);
  auto& h = recs[0];
  h[kRecordHeaderSize + 8] = 2;
  uint64_t sum = checksum64(h.data(), h.size() - 8, kRecordSeed);
  std::memcpy(h.data() + h.size() - 8, &sum, 8);
  std::vector<uint8_t> v2;
  for (auto& r : recs) v2.insert(v2.end(), r.begin(), r.end());
  EXPECT_EQ(apply_stream(v2, &image).code(), Code::kNotSupported);
}

TEST(Stream, UnknownOptionalRecordsAreSkippedOthersRefused) {
  for (uint32_t flags : {kOptional, 0u}) {
    std::vector<uint8_t> out;
    StreamWriter w([&](const uint8_t* p, size_t n) { out.insert(out.end(), p, p + n); return Status::ok(); }, false);
    ASSERT_TRUE(w.header(make_header(false)).is_ok());
    std::vector<uint8_t> data(4096, 7);
    ASSERT_TRUE(w.data(4096, data.data(), 4096).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
    // Hand-build a record of type 99 after the header, renumbering the rest.
    std::vector<uint8_t> v, image;
    auto recs = records_of(out);
    std::vector<uint8_t> extra(kRecordHeaderSize + 4 + kRecordTrailerSize, 0);
    uint32_t type = 99, len = 4;
    std::memcpy(extra.data(), &type, 4);
    std::memcpy(extra.data() + 4, &flags, 4);
    std::memcpy(extra.data() + 16, &len, 4);
    recs.insert(recs.begin() + 1, extra);
    StreamingChecksum64 whole(kStreamSeed);
    for (size_t i = 0; i < recs.size(); ++i) {
      auto& r = recs[i];
      uint64_t seq = i;
      std::memcpy(r.data() + 8, &seq, 8);
      if (i + 1 == recs.size()) {  // END: count and whole checksum
        uint64_t n = recs.size() - 1, d = whole.digest();
        std::memcpy(r.data() + kRecordHeaderSize, &n, 8);
        std::memcpy(r.data() + kRecordHeaderSize + 24, &d, 8);
      }
      uint64_t sum = checksum64(r.data(), r.size() - 8, kRecordSeed);
      std::memcpy(r.data() + r.size() - 8, &sum, 8);
      if (i + 1 < recs.size()) whole.update(r.data(), r.size());
      v.insert(v.end(), r.begin(), r.end());
    }
    Status s = apply_stream(v, &image);
    EXPECT_EQ(s.is_ok(), flags == kOptional) << s.to_string();
  }
}

TEST(Stream, ExtentsOutsideTheVolumeOrBackwardsAreRefusedByTheWriterAndReader) {
  std::vector<uint8_t> out;
  StreamWriter w([&](const uint8_t* p, size_t n) { out.insert(out.end(), p, p + n); return Status::ok(); }, false);
  ASSERT_TRUE(w.header(make_header(false)).is_ok());
  ASSERT_TRUE(w.zero(8192, 4096).is_ok());
  EXPECT_FALSE(w.zero(0, 4096).is_ok());
  ASSERT_TRUE(w.zero(kVolume, 4096).is_ok());  // the writer does not know the size; the reader refuses it
  ASSERT_TRUE(w.finish().is_ok());
  std::vector<uint8_t> image;
  Status s = apply_stream(out, &image);
  EXPECT_NE(s.message().find("past the end of the volume"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace multisnap::stream
