// The store's superblock (block 0, written once by `create`) and the layout
// it describes: where the commit slots, space bitmaps, metadata blocks and
// data chunks of the store device are. docs/format.md has the byte table.
#pragma once

#include <algorithm>
#include <array>
#include <optional>
#include <string>

#include "io/block_device.h"
#include "meta/block.h"

namespace multisnap {

// Version 2: every commit record kept twice; snapshot records carry a uuid
// and flags; the store area records origin changes and a pending receive.
// Version 3: one space: the metadata space map covers the data area too, and
// metadata borrows whole data chunks when its pool is full (transaction.h).
// Version 4: room to grow: the bitmaps and commit records are sized at
// create for the largest size the store may grow to, and each commit record
// carries the data area's current size (`grow` changes it in one commit).
// Versions 2 and 3 still open, read-write, at the size they were made with.
constexpr uint32_t kFormatVersion = 4;
constexpr uint32_t kFirstSharedSpaceVersion = 3;
constexpr uint32_t kFirstGrowableVersion = 4;
// Copies of each commit record (docs/format.md, section 4).
constexpr int kCommitCopies = 2;
constexpr uint32_t kMinChunkSize = 4096;
constexpr uint32_t kMaxChunkSize = 1u << 20;
// Units (metadata blocks or data chunks) tracked by one bitmap block.
constexpr uint64_t kBitsPerBitmap = kBlockPayload * 8;
// Bytes of commit record per block for bitmap selectors (2 bits each).
constexpr size_t kCommitFirstSelectorOffset = 640;
constexpr size_t kStoreAreaOffset = 128;
constexpr size_t kStoreAreaSize = 512;

struct Layout {
  uint32_t version = kFormatVersion;  // of the superblock that describes it
  uint32_t chunk_size = 0;
  uint64_t origin_size = 0;  // bytes
  // Bytes of the store device used: at create, or (format 4) as far as the
  // data area has grown (TransactionManager keeps this and data_chunks
  // current from the commit record).
  uint64_t store_size = 0;
  uint64_t commit_start = 0;       // first block of the commit records
  uint32_t commit_blocks = 0;      // blocks per commit record
  uint64_t meta_bitmap_start = 0;  // block; bitmap i slot s at start + 2*i + s
  uint32_t meta_bitmaps = 0;
  uint64_t data_bitmap_start = 0;
  uint32_t data_bitmaps = 0;
  uint64_t meta_start = 0;   // first metadata pool block
  uint64_t meta_blocks = 0;  // metadata pool size in blocks
  uint64_t data_start = 0;   // byte offset of data chunk 0 (chunk aligned)
  uint64_t data_chunks = 0;  // in service now (format 4: the commit record's)

  uint64_t origin_chunks() const { return (origin_size + chunk_size - 1) / chunk_size; }
  // Metadata may borrow data chunks (format 3 and later).
  bool shared_space() const { return version >= kFirstSharedSpaceVersion; }
  bool growable() const { return version >= kFirstGrowableVersion; }
  // The most data chunks the bitmaps can track: the data bitmaps' units, and
  // (one space) the metadata bitmaps' reach over the data area. `grow` may
  // take data_chunks up to this.
  uint64_t capacity_chunks() const {
    uint64_t cap = uint64_t{data_bitmaps} * kBitsPerBitmap;
    if (shared_space()) {
      uint64_t reach = meta_start + uint64_t{meta_bitmaps} * kBitsPerBitmap;  // first block not covered
      cap = std::min(cap, reach > data_start_block() ? (reach - data_start_block()) / chunk_blocks() : 0);
    }
    return cap;
  }
  // Data chunks of a store device of `bytes` (at most capacity_chunks()).
  uint64_t chunks_for_device(uint64_t bytes) const {
    uint64_t end_block = bytes / 4096;
    uint64_t n = end_block > data_start_block() ? (end_block - data_start_block()) / chunk_blocks() : 0;
    return std::min(n, capacity_chunks());
  }
  uint64_t chunk_blocks() const { return chunk_size / 4096; }
  uint64_t data_start_block() const { return data_start / 4096; }
  uint64_t data_end_block() const { return data_start_block() + data_chunks * chunk_blocks(); }
  // Units of the metadata space map: metadata block b is unit b - meta_start.
  // Format 2: the pool only; format 3: up to the end of the data area (the
  // blocks between the pool and data_start are never allocated).
  uint64_t meta_units() const { return shared_space() ? data_end_block() - meta_start : meta_blocks; }
  // The data chunk holding block b (b inside the data area).
  uint64_t chunk_of_block(uint64_t b) const { return (b - data_start_block()) / chunk_blocks(); }
  bool in_data_area(uint64_t b) const { return b >= data_start_block() && b < data_end_block(); }
  uint64_t data_offset(uint64_t chunk) const { return data_start + chunk * chunk_size; }
  // First block of copy `copy` of commit slot `slot` (copies of both slots
  // alternate: slot 0 copy 0, slot 1 copy 0, slot 0 copy 1, slot 1 copy 1).
  uint64_t commit_record_block(int slot, int copy) const {
    return commit_start + uint64_t(copy * 2 + slot) * commit_blocks;
  }
};

struct LayoutRequest {
  uint64_t store_size = 0;
  uint32_t chunk_size = 64 * 1024;
  uint64_t origin_size = 0;
  std::optional<uint64_t> metadata_size;  // bytes; default: sized from the data area
  // Largest size `grow` may take the store to (format 4): the bitmaps and
  // commit records get room for it now. Default: kDefaultGrowthFactor x
  // store_size. At least store_size.
  std::optional<uint64_t> max_store_size;
  // 2 or 3 makes a store of an earlier format (2: fixed metadata area; 3:
  // no room to grow), for tests of the compatibility paths; anything else is
  // kFormatVersion.
  uint32_t version = kFormatVersion;
};
// A store may grow to this many times its size at create unless
// --max-store-size says otherwise. The room costs 2 metadata-bitmap blocks
// per 127 MiB of the maximum and 2 data-bitmap blocks per 32,512 chunks of
// it (about 0.1% of the store at 16x, 0.2% with 4 KiB chunks; unwritten
// and not preallocated until in service, so nothing on a sparse file) and
// 2 bits of commit record per bitmap.
constexpr uint64_t kDefaultGrowthFactor = 16;
Result<Layout> compute_layout(const LayoutRequest& request);
// Blocks per commit slot for this many bitmaps (their selectors must fit).
uint32_t commit_blocks_for(uint64_t meta_bitmaps, uint64_t data_bitmaps);

struct Superblock {
  // Which exception store: a code that the store layer gives its meaning
  // (store/store_format.h); the metadata layer keeps it and nothing more.
  uint32_t format = 0;
  std::array<uint8_t, 16> uuid{};
  uint64_t created_ns = 0;
  Layout layout;
  std::string origin_path;
  uint64_t checksum_seed() const;  // seed for every other metadata block
};

struct SuperblockDisk {
  BlockHeaderDisk header;
  char magic[8];  // "MSNAPSB\0"
  uint32_t version;
  uint32_t format;
  uint8_t uuid[16];
  uint64_t created_ns;
  uint32_t block_size;
  uint32_t chunk_size;
  uint64_t origin_size;
  uint64_t store_size;
  uint64_t commit_start;
  uint32_t commit_blocks;
  uint32_t reserved0;
  uint64_t meta_bitmap_start;
  uint32_t meta_bitmaps;
  uint32_t data_bitmaps;
  uint64_t data_bitmap_start;
  uint64_t meta_start;
  uint64_t meta_blocks;
  uint64_t data_start;
  uint64_t data_chunks;
  uint32_t origin_path_len;
  uint32_t reserved1;
  char origin_path[kBlockSize - 176];
};
static_assert(sizeof(SuperblockDisk) == kBlockSize);
static_assert(offsetof(SuperblockDisk, magic) == 32);
static_assert(offsetof(SuperblockDisk, created_ns) == 64);
static_assert(offsetof(SuperblockDisk, commit_start) == 96);
static_assert(offsetof(SuperblockDisk, data_chunks) == 160);
static_assert(offsetof(SuperblockDisk, origin_path) == 176);

Status write_superblock(BlockDevice& dev, const Superblock& sb);
Result<Superblock> read_superblock(BlockDevice& dev);
// True when block 0 carries the multisnap magic (valid or not).
bool looks_like_store(BlockDevice& dev);

}  // namespace multisnap
