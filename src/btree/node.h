// The on-disk B+tree node: a metadata block holding sorted fixed-size keys
// and, beside them, fixed-size values (leaves) or child block numbers
// (internal nodes). See docs/format.md, "B+tree node".
//
//   offset 0   BlockHeaderDisk (32 bytes, type kBTreeNode)
//   offset 32  NodeHeaderDisk  (16 bytes)
//   offset 48  key[0] .. key[max-1]       (key_size bytes each)
//   then       value[0] .. value[max-1]   (value_size bytes each; 8 = child for internal)
//
// In an internal node key[i] is a lower bound of every key under child i,
// and every key under child i is below key[i+1].
#pragma once

#include <cstdint>
#include <cstring>

#include "meta/block.h"

namespace multisnap {

struct NodeHeaderDisk {
  uint32_t flags;       // bit 0: leaf
  uint32_t nr_entries;
  uint32_t tree_kind;   // which tree this node belongs to (persisted constant)
  uint16_t key_size;
  uint16_t value_size;  // 8 in internal nodes
};
static_assert(sizeof(NodeHeaderDisk) == 16);
constexpr size_t kNodeEntriesOffset = sizeof(BlockHeaderDisk) + sizeof(NodeHeaderDisk);
constexpr uint32_t kNodeLeaf = 1;

constexpr uint32_t node_capacity(size_t key_size, size_t value_size) {
  return static_cast<uint32_t>((kBlockSize - kNodeEntriesOffset) / (key_size + value_size));
}

// A view over a node's bytes; does not own them.
class NodeView {
 public:
  NodeView(const uint8_t* data) : d_(const_cast<uint8_t*>(data)) {}  // NOLINT

  NodeHeaderDisk& hdr() const { return *reinterpret_cast<NodeHeaderDisk*>(d_ + sizeof(BlockHeaderDisk)); }
  bool leaf() const { return hdr().flags & kNodeLeaf; }
  uint32_t nr() const { return hdr().nr_entries; }
  uint32_t key_size() const { return hdr().key_size; }
  uint32_t value_size() const { return hdr().value_size; }
  uint32_t max() const { return node_capacity(key_size(), value_size()); }
  bool full() const { return nr() >= max(); }

  uint8_t* key(uint32_t i) const { return d_ + kNodeEntriesOffset + size_t{i} * key_size(); }
  uint8_t* value(uint32_t i) const {
    return d_ + kNodeEntriesOffset + size_t{max()} * key_size() + size_t{i} * value_size();
  }
  uint64_t child(uint32_t i) const {
    uint64_t c;
    std::memcpy(&c, value(i), 8);
    return c;
  }
  void set_child(uint32_t i, uint64_t c) const { std::memcpy(value(i), &c, 8); }

  void init(bool leaf, uint32_t tree_kind, uint16_t key_size, uint16_t value_size) const {
    hdr() = {leaf ? kNodeLeaf : 0u, 0, tree_kind, key_size, value_size};
  }

  void insert_at(uint32_t i, const uint8_t* k, const uint8_t* v) const {
    uint32_t n = nr();
    std::memmove(key(i + 1), key(i), size_t{n - i} * key_size());
    std::memmove(value(i + 1), value(i), size_t{n - i} * value_size());
    std::memcpy(key(i), k, key_size());
    std::memcpy(value(i), v, value_size());
    hdr().nr_entries = n + 1;
  }
  void remove_at(uint32_t i) const {
    uint32_t n = nr();
    std::memmove(key(i), key(i + 1), size_t{n - i - 1} * key_size());
    std::memmove(value(i), value(i + 1), size_t{n - i - 1} * value_size());
    hdr().nr_entries = n - 1;
  }
  // Appends `count` entries of `src` starting at `from` to this node.
  void append_from(const NodeView& src, uint32_t from, uint32_t count) const {
    std::memcpy(key(nr()), src.key(from), size_t{count} * key_size());
    std::memcpy(value(nr()), src.value(from), size_t{count} * value_size());
    hdr().nr_entries = nr() + count;
  }
  // Moves this node's entries up by `count` to make room at the front, and
  // copies `count` entries of `src` from `from` there.
  void prepend_from(const NodeView& src, uint32_t from, uint32_t count) const {
    std::memmove(key(count), key(0), size_t{nr()} * key_size());
    std::memmove(value(count), value(0), size_t{nr()} * value_size());
    std::memcpy(key(0), src.key(from), size_t{count} * key_size());
    std::memcpy(value(0), src.value(from), size_t{count} * value_size());
    hdr().nr_entries = nr() + count;
  }
  void truncate(uint32_t n) const { hdr().nr_entries = n; }
  void drop_front(uint32_t count) const {
    uint32_t n = nr();
    std::memmove(key(0), key(count), size_t{n - count} * key_size());
    std::memmove(value(0), value(count), size_t{n - count} * value_size());
    hdr().nr_entries = n - count;
  }

 private:
  uint8_t* d_;
};

}  // namespace multisnap
