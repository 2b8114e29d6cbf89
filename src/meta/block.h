// Every metadata block starts with this header, so a block identifies itself
// (type, own block number, the transaction that wrote it) and is verified on
// every read (checksum over the rest of the block, seeded per store so a
// block of another store never validates here). See docs/format.md, "Block
// header".
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/status.h"

namespace multisnap {

constexpr size_t kBlockSize = 4096;

// Persisted: never renumber.
enum class BlockType : uint32_t {
  kSuperblock = 0x4d530001,
  kCommit = 0x4d530002,
  kBitmap = 0x4d530003,
  kBTreeNode = 0x4d530004,
};
const char* block_type_name(BlockType t);

struct BlockHeaderDisk {
  uint64_t checksum;    // XXH3-64 of bytes [8, 4096), seeded with the store's seed
  uint32_t type;        // BlockType
  uint32_t reserved;    // zero
  uint64_t blocknr;     // this block's own number in the store device
  uint64_t generation;  // the transaction that wrote this version
};
static_assert(sizeof(BlockHeaderDisk) == 32);
constexpr size_t kBlockPayload = kBlockSize - sizeof(BlockHeaderDisk);

inline BlockHeaderDisk* block_header(uint8_t* block) {
  return reinterpret_cast<BlockHeaderDisk*>(block);
}
inline const BlockHeaderDisk* block_header(const uint8_t* block) {
  return reinterpret_cast<const BlockHeaderDisk*>(block);
}

// Fills in the checksum of a block whose other header fields are set.
void seal_block(uint8_t* block, uint64_t seed);

// Verifies checksum, type, block number and that the generation is not
// newer than max_generation. The error says which check failed and where.
Status validate_block(const uint8_t* block, uint64_t blocknr, BlockType type, uint64_t seed,
                      uint64_t max_generation);

constexpr uint64_t kSuperblockSeed = 0x616e73696c756d00ull;  // fixed: the seed lives inside it

}  // namespace multisnap
