#include "meta/block.h"

#include "util/checksum.h"

namespace multisnap {

const char* block_type_name(BlockType t) {
  switch (t) {
    case BlockType::kSuperblock: return "superblock";
    case BlockType::kCommit: return "commit record";
    case BlockType::kBitmap: return "space bitmap";
    case BlockType::kBTreeNode: return "btree node";
  }
  return "unknown";
}

void seal_block(uint8_t* block, uint64_t seed) {
  block_header(block)->checksum = checksum64(block + 8, kBlockSize - 8, seed);
}

Status validate_block(const uint8_t* block, uint64_t blocknr, BlockType type, uint64_t seed,
                      uint64_t max_generation) {
  const BlockHeaderDisk* h = block_header(block);
  uint64_t sum = checksum64(block + 8, kBlockSize - 8, seed);
  if (h->checksum != sum)
    return make_error(Code::kCorruption, "{} at block {}: checksum mismatch", block_type_name(type),
                      blocknr);
  if (h->type != static_cast<uint32_t>(type))
    return make_error(Code::kCorruption, "block {}: expected a {}, found type {:#x}", blocknr,
                      block_type_name(type), h->type);
  if (h->blocknr != blocknr)
    return make_error(Code::kCorruption, "{} at block {}: it says it is block {} (misdirected write?)",
                      block_type_name(type), blocknr, h->blocknr);
  if (h->generation > max_generation)
    return make_error(Code::kCorruption, "{} at block {}: generation {} is newer than the commit ({})",
                      block_type_name(type), blocknr, h->generation, max_generation);
  return Status::ok();
}

}  // namespace multisnap
