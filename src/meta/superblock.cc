#include "meta/superblock.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "util/checksum.h"
#include "util/units.h"

namespace multisnap {

namespace {
constexpr char kMagic[8] = {'M', 'S', 'N', 'A', 'P', 'S', 'B', 0};
// Range store worst case is about 70 bytes of metadata per exception (leaves
// half full, inner nodes, a transaction's shadow copies); budget 128.
constexpr uint64_t kMetaBytesPerChunk = 128;
// Room for the snapshot table and names too: 64 MiB holds about 400,000
// snapshots. Small stores get a sixteenth of their size at most.
constexpr uint64_t kDefaultMetaFloor = 64ull << 20;
constexpr uint64_t kMinMetaBlocks = 256;  // 1 MiB, the default's floor
// --metadata-size may go lower: the metadata borrows data chunks when the
// pool is full, so a small pool only costs locality.
constexpr uint64_t kMinRequestedMetaBlocks = 1;  // 4 KiB
// The default room to grow stops here (its bitmaps' 2-bit selectors go in
// every commit record: about 140 KB at 64 TiB with 64 KiB chunks);
// --max-store-size may go further.
constexpr uint64_t kDefaultMaxStoreSize = 64ull << 40;
constexpr uint64_t kMaxStoreSize = 1ull << 50;  // 1 PiB

}  // namespace

uint32_t commit_blocks_for(uint64_t meta_bitmaps, uint64_t data_bitmaps) {
  uint64_t bytes = div_round_up(meta_bitmaps, 4) + div_round_up(data_bitmaps, 4);
  uint64_t first = kBlockSize - kCommitFirstSelectorOffset;
  if (bytes <= first) return 1;
  return static_cast<uint32_t>(1 + div_round_up(bytes - first, kBlockPayload));
}

Result<Layout> compute_layout(const LayoutRequest& r) {
  if (!is_power_of_two(r.chunk_size) || r.chunk_size < kMinChunkSize || r.chunk_size > kMaxChunkSize)
    return make_error(Code::kInvalidArgument,
                      "chunk size {} must be a power of two from 4 KiB to 1 MiB", r.chunk_size);
  if (r.origin_size == 0) return make_error(Code::kInvalidArgument, "the origin is empty");
  Layout l;
  l.version = (r.version == 2 || r.version == 3) ? r.version : kFormatVersion;
  l.chunk_size = r.chunk_size;
  l.origin_size = r.origin_size;
  l.store_size = r.store_size / kBlockSize * kBlockSize;
  const uint64_t chunk_blocks = r.chunk_size / kBlockSize;
  const uint64_t total_blocks = l.store_size / kBlockSize;
  // Format 4: the bitmaps (and the commit record's selectors for them) get
  // room for the largest size the store may grow to.
  uint64_t max_blocks = total_blocks;
  if (l.growable()) {
    uint64_t max_size = r.max_store_size ? *r.max_store_size
                                         : std::max(l.store_size, std::min(l.store_size * kDefaultGrowthFactor,
                                                                           kDefaultMaxStoreSize));
    if (max_size < l.store_size)
      return make_error(Code::kInvalidArgument, "--max-store-size {} is below the store's size {}",
                        format_size(max_size), format_size(l.store_size));
    if (r.max_store_size && max_size > kMaxStoreSize)
      return make_error(Code::kInvalidArgument, "--max-store-size {} is above the limit of {}",
                        format_size(max_size), format_size(kMaxStoreSize));
    max_blocks = max_size / kBlockSize;
  }
  uint64_t data_chunks = total_blocks / chunk_blocks;
  uint64_t meta_blocks = 0;
  if (r.metadata_size) {
    meta_blocks = *r.metadata_size / kBlockSize;
    if (meta_blocks < kMinRequestedMetaBlocks)
      return make_error(Code::kInvalidArgument, "metadata size {} is below the minimum of 4 KiB",
                        *r.metadata_size);
  }
  // Fixed point: the data area shrinks as the metadata it needs is carved out.
  for (int iter = 0; iter < 8; ++iter) {
    if (!r.metadata_size) {
      uint64_t floor_blocks = std::min(kDefaultMetaFloor, l.store_size / 16) / kBlockSize;
      meta_blocks = std::max({kMinMetaBlocks, floor_blocks, div_round_up(data_chunks * kMetaBytesPerChunk, kBlockSize)});
    }
    // One space (format 3): the metadata bitmaps cover every block of the
    // store, a bound on the pool plus the data area whatever the fixed point.
    uint64_t meta_bitmaps = l.shared_space() ? div_round_up(max_blocks, kBitsPerBitmap)
                                             : div_round_up(meta_blocks, kBitsPerBitmap);
    uint64_t data_bitmaps = std::max<uint64_t>(
        1, div_round_up(l.growable() ? max_blocks / chunk_blocks : data_chunks, kBitsPerBitmap));
    uint32_t cblocks = commit_blocks_for(meta_bitmaps, data_bitmaps);
    uint64_t fixed = 1 + 2ull * kCommitCopies * cblocks + 2 * meta_bitmaps + 2 * data_bitmaps;
    uint64_t data_start_block = round_up(fixed + meta_blocks, chunk_blocks);
    if (data_start_block >= total_blocks) {
      if (l.growable() && max_blocks > total_blocks)
        return make_error(Code::kNoSpace,
                          "the store ({}) is too small to hold metadata and data with room to grow to {} (its "
                          "bitmaps take {}); give a smaller --max-store-size",
                          format_size(l.store_size), format_size(max_blocks * kBlockSize),
                          format_size((2 * meta_bitmaps + 2 * data_bitmaps) * kBlockSize));
      return make_error(Code::kNoSpace, "the store ({}) is too small to hold metadata and data",
                        format_size(l.store_size));
    }
    uint64_t chunks = (total_blocks - data_start_block) / chunk_blocks;
    l.commit_start = 1;
    l.commit_blocks = cblocks;
    l.meta_bitmap_start = 1 + 2ull * kCommitCopies * cblocks;
    l.meta_bitmaps = static_cast<uint32_t>(meta_bitmaps);
    l.data_bitmap_start = l.meta_bitmap_start + 2 * meta_bitmaps;
    l.data_bitmaps = static_cast<uint32_t>(data_bitmaps);
    l.meta_start = l.data_bitmap_start + 2 * data_bitmaps;
    l.meta_blocks = meta_blocks;  // blocks up to the chunk-aligned data area stay unused
    l.data_start = data_start_block * kBlockSize;
    l.data_chunks = chunks;
    if (chunks == data_chunks) break;
    data_chunks = chunks;
  }
  if (l.data_chunks == 0)
    return make_error(Code::kNoSpace, "the store ({}) has no room for data chunks",
                      format_size(l.store_size));
  return l;
}

uint64_t Superblock::checksum_seed() const {
  return checksum64(uuid.data(), uuid.size(), kSuperblockSeed);
}


Status write_superblock(BlockDevice& dev, const Superblock& sb) {
  std::vector<uint8_t> buf(kBlockSize, 0);
  auto* d = reinterpret_cast<SuperblockDisk*>(buf.data());
  if (sb.origin_path.size() >= sizeof(d->origin_path))
    return make_error(Code::kInvalidArgument, "origin path is longer than {} bytes",
                      sizeof(d->origin_path) - 1);
  d->header.type = static_cast<uint32_t>(BlockType::kSuperblock);
  d->header.blocknr = 0;
  d->header.generation = 0;
  std::memcpy(d->magic, kMagic, sizeof kMagic);
  d->version = sb.layout.version;
  d->format = sb.format;
  std::memcpy(d->uuid, sb.uuid.data(), 16);
  d->created_ns = sb.created_ns;
  d->block_size = kBlockSize;
  const Layout& l = sb.layout;
  d->chunk_size = l.chunk_size;
  d->origin_size = l.origin_size;
  d->store_size = l.store_size;
  d->commit_start = l.commit_start;
  d->commit_blocks = l.commit_blocks;
  d->meta_bitmap_start = l.meta_bitmap_start;
  d->meta_bitmaps = l.meta_bitmaps;
  d->data_bitmaps = l.data_bitmaps;
  d->data_bitmap_start = l.data_bitmap_start;
  d->meta_start = l.meta_start;
  d->meta_blocks = l.meta_blocks;
  d->data_start = l.data_start;
  d->data_chunks = l.data_chunks;
  d->origin_path_len = static_cast<uint32_t>(sb.origin_path.size());
  std::memcpy(d->origin_path, sb.origin_path.data(), sb.origin_path.size());
  seal_block(buf.data(), kSuperblockSeed);
  MS_TRY(dev.write(0, buf.data(), buf.size()));
  return dev.flush();
}

bool looks_like_store(BlockDevice& dev) {
  if (dev.size() < kBlockSize) return false;
  std::vector<uint8_t> buf(kBlockSize);
  if (!dev.read(0, buf.data(), buf.size()).is_ok()) return false;
  return std::memcmp(reinterpret_cast<SuperblockDisk*>(buf.data())->magic, kMagic, 8) == 0;
}

Result<Superblock> read_superblock(BlockDevice& dev) {
  if (dev.size() < kBlockSize)
    return make_error(Code::kCorruption, "{} is too small to be a multisnap store", dev.describe());
  std::vector<uint8_t> buf(kBlockSize);
  MS_TRY(dev.read(0, buf.data(), buf.size()));
  const auto* d = reinterpret_cast<const SuperblockDisk*>(buf.data());
  if (std::memcmp(d->magic, kMagic, 8) != 0)
    return make_error(Code::kCorruption, "{} is not a multisnap store (no superblock magic)",
                      dev.describe());
  MS_TRY(validate_block(buf.data(), 0, BlockType::kSuperblock, kSuperblockSeed, 0)
             .annotate(dev.describe()));
  if (d->version == 1)
    return make_error(Code::kNotSupported,
                      "{} has store format version 1 (multisnap 0.1), which this multisnap does not open: it keeps "
                      "one copy of each commit record and no snapshot uuids. To upgrade, serve it with multisnap "
                      "0.1 and copy the origin and each snapshot you keep out with nbdcopy, then `multisnap create` "
                      "a new store and copy them back in",
                      dev.describe());
  if (d->version < 2 || d->version > kFormatVersion)
    return make_error(Code::kNotSupported,
                      "{}: store format version {} is not supported (this multisnap opens versions 2 to {})",
                      dev.describe(), d->version, kFormatVersion);
  if (d->block_size != kBlockSize)
    return make_error(Code::kCorruption, "{}: block size {} is not {}", dev.describe(), d->block_size,
                      kBlockSize);
  Superblock sb;
  sb.format = d->format;  // open_store() checks it
  std::memcpy(sb.uuid.data(), d->uuid, 16);
  sb.created_ns = d->created_ns;
  Layout& l = sb.layout;
  l.version = d->version;
  l.chunk_size = d->chunk_size;
  l.origin_size = d->origin_size;
  l.store_size = d->store_size;
  l.commit_start = d->commit_start;
  l.commit_blocks = d->commit_blocks;
  l.meta_bitmap_start = d->meta_bitmap_start;
  l.meta_bitmaps = d->meta_bitmaps;
  l.data_bitmaps = d->data_bitmaps;
  l.data_bitmap_start = d->data_bitmap_start;
  l.meta_start = d->meta_start;
  l.meta_blocks = d->meta_blocks;
  l.data_start = d->data_start;
  l.data_chunks = d->data_chunks;
  if (d->origin_path_len >= sizeof(d->origin_path))
    return make_error(Code::kCorruption, "{}: origin path length {} is impossible", dev.describe(),
                      d->origin_path_len);
  sb.origin_path.assign(d->origin_path, d->origin_path_len);
  // The layout must be self-consistent and inside the device.
  bool sane = is_power_of_two(l.chunk_size) && l.chunk_size >= kMinChunkSize &&
              l.chunk_size <= kMaxChunkSize && l.commit_start == 1 && l.commit_blocks >= 1 &&
              l.meta_bitmap_start == 1 + 2ull * kCommitCopies * l.commit_blocks &&
              l.data_bitmap_start == l.meta_bitmap_start + 2ull * l.meta_bitmaps &&
              l.meta_start == l.data_bitmap_start + 2ull * l.data_bitmaps &&
              l.commit_blocks == commit_blocks_for(l.meta_bitmaps, l.data_bitmaps) &&
              (l.shared_space() ? uint64_t{l.meta_bitmaps} * kBitsPerBitmap >= l.meta_units()
                                : l.meta_bitmaps == div_round_up(l.meta_blocks, kBitsPerBitmap)) &&
              (l.growable() ? l.data_bitmaps >= std::max<uint64_t>(1, div_round_up(l.data_chunks, kBitsPerBitmap))
                            : l.data_bitmaps == std::max<uint64_t>(1, div_round_up(l.data_chunks, kBitsPerBitmap))) &&
              l.data_start % l.chunk_size == 0 &&
              l.data_start >= (l.meta_start + l.meta_blocks) * kBlockSize &&
              l.data_start + l.data_chunks * l.chunk_size <= l.store_size && l.origin_size > 0;
  if (!sane) return make_error(Code::kCorruption, "{}: the superblock's layout is inconsistent", dev.describe());
  if (l.store_size > dev.size())
    return make_error(Code::kCorruption, "{}: the store was created with {} bytes but the device has {}",
                      dev.describe(), l.store_size, dev.size());
  return sb;
}

}  // namespace multisnap
