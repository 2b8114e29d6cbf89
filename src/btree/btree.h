// BTree<Traits>: a copy-on-write B+tree of fixed-size keys and values in
// metadata blocks, generic over the key/value traits:
//
//   struct Traits {
//     using Key = ...; using Value = ...;
//     static constexpr uint32_t kTreeKind;          // persisted; tags every node
//     static constexpr uint16_t kKeySize, kValueSize;
//     static void encode_key(const Key&, uint8_t*);  static Key decode_key(const uint8_t*);
//     static void encode_value(const Value&, uint8_t*); static Value decode_value(const uint8_t*);
//     static bool less(const Key&, const Key&);
//     static std::string key_string(const Key&);    // for check reports
//   };
//
// Changes shadow every node on the path from the root (transaction.h), so
// the root block number changes; the owner stores root() in its commit area.
// Inserts split full nodes on the way down and removes rebalance thin ones
// on the way down, so neither ever walks back up. Every node read is checked
// (checksum etc. by the cache; kind, sizes and count here).
//
// Not thread-safe; a BTree is a cheap handle (transaction manager + root).
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "btree/node.h"
#include "meta/transaction.h"

namespace multisnap {

// What a walk over a tree's nodes reports (multisnap check).
struct NodeVisit {
  uint64_t blocknr;
  uint32_t depth;  // 0 = root
  bool leaf;
  uint32_t entries;
};

template <class T>
class BTree {
 public:
  using Key = typename T::Key;
  using Value = typename T::Value;
  struct Entry {
    Key key;
    Value value;
  };
  static constexpr uint32_t kLeafMax = node_capacity(T::kKeySize, T::kValueSize);
  static constexpr uint32_t kInternalMax = node_capacity(T::kKeySize, 8);
  // Metadata blocks one insert or remove may allocate at most (the shadowed
  // path, a split or rebalanced sibling per level, a new root), for trees of
  // up to 7 levels: 10^14 entries at the smallest fan-out used here.
  static constexpr uint64_t kOpReserve = 16;
  static_assert(kLeafMax >= 4 && kInternalMax >= 4, "keys and values too large for a node");

  BTree(TransactionManager& tm, uint64_t root) : tm_(tm), root_(root) {}

  // Allocates an empty tree (one empty leaf) and returns its root.
  static Result<uint64_t> create(TransactionManager& tm) {
    MS_ASSIGN_OR_RETURN(BlockRef b, tm.new_block(BlockType::kBTreeNode));
    NodeView(b.mutable_data()).init(true, T::kTreeKind, T::kKeySize, T::kValueSize);
    return b.blocknr();
  }

  uint64_t root() const { return root_; }

  Result<std::optional<Value>> lookup(const Key& k) {
    MS_ASSIGN_OR_RETURN(BlockRef b, read_node(root_));
    for (;;) {
      NodeView n(b.data());
      if (n.leaf()) {
        uint32_t i = lower_index(n, k);
        if (i < n.nr() && equal(key_at(n, i), k)) return std::optional<Value>(value_at(n, i));
        return std::optional<Value>();
      }
      int i = last_le(n, k);
      if (i < 0) return std::optional<Value>();
      MS_ASSIGN_OR_RETURN(b, read_node(n.child(static_cast<uint32_t>(i))));
    }
  }

  // The first entry whose key is >= k.
  Result<std::optional<Entry>> lower_bound(const Key& k) {
    std::optional<Entry> out;
    MS_TRY(lower_bound_in(root_, k, &out));
    return out;
  }

  // The last entry whose key is <= k.
  Result<std::optional<Entry>> floor(const Key& k) {
    std::optional<Entry> out;
    MS_TRY(floor_in(root_, k, &out));
    return out;
  }

  // Calls fn for each entry with key >= from, in order, until fn returns false.
  Status scan(const Key& from, const std::function<bool(const Key&, const Value&)>& fn) {
    bool stop = false;
    return scan_in(root_, from, fn, &stop);
  }

  // Inserts, or replaces the value of an existing key.
  Status insert(const Key& k, const Value& v) {
    MS_TRY(tm_.reserve_meta(kOpReserve));
    MS_ASSIGN_OR_RETURN(BlockRef node, shadow_root());
    if (NodeView(node.data()).full()) {
      MS_ASSIGN_OR_RETURN(BlockRef top, tm_.new_block(BlockType::kBTreeNode));
      NodeView t(top.mutable_data());
      t.init(false, T::kTreeKind, T::kKeySize, 8);
      t.insert_at(0, NodeView(node.data()).key(0), child_bytes(node.blocknr()).data());
      MS_TRY(split_child(top, 0, k));
      root_ = top.blocknr();
      node = std::move(top);
    }
    uint8_t kb[T::kKeySize], vb[T::kValueSize];
    T::encode_key(k, kb);
    T::encode_value(v, vb);
    for (;;) {
      NodeView n(node.mutable_data());
      if (n.leaf()) {
        uint32_t i = lower_index(n, k);
        if (i < n.nr() && equal(key_at(n, i), k)) std::memcpy(n.value(i), vb, T::kValueSize);
        else n.insert_at(i, kb, vb);
        return Status::ok();
      }
      int li = last_le(n, k);
      uint32_t i = li < 0 ? 0 : static_cast<uint32_t>(li);
      if (li < 0) std::memcpy(n.key(0), kb, T::kKeySize);  // new minimum of the subtree
      MS_ASSIGN_OR_RETURN(BlockRef child, shadow_child(node, i));
      if (NodeView(child.data()).full()) {
        MS_TRY(split_child(node, i, k));
        if (i + 1 < n.nr() && !T::less(k, key_at(n, i + 1))) ++i;
        MS_ASSIGN_OR_RETURN(child, shadow_child(node, i));
      }
      node = std::move(child);
    }
  }

  // Removes k; returns whether it was there.
  Result<bool> remove(const Key& k) {
    MS_ASSIGN_OR_RETURN(std::optional<Value> present, lookup(k));
    if (!present) return false;
    MS_TRY(tm_.reserve_meta(kOpReserve));
    MS_ASSIGN_OR_RETURN(BlockRef node, shadow_root());
    for (;;) {
      NodeView n(node.mutable_data());
      if (n.leaf()) {
        uint32_t i = lower_index(n, k);
        if (i >= n.nr() || !equal(key_at(n, i), k))
          return make_error(Code::kCorruption, "btree {:#x}: key {} vanished during remove", T::kTreeKind,
                            T::key_string(k));
        n.remove_at(i);
        break;
      }
      int li = last_le(n, k);
      if (li < 0)
        return make_error(Code::kCorruption, "btree {:#x}: key {} vanished during remove", T::kTreeKind,
                          T::key_string(k));
      uint32_t i = static_cast<uint32_t>(li);
      MS_ASSIGN_OR_RETURN(BlockRef child, shadow_child(node, i));
      NodeView c(child.data());
      if (c.nr() <= c.max() / 3 && n.nr() > 1) {
        MS_TRY(rebalance(node, i));
        li = last_le(n, k);
        i = li < 0 ? 0 : static_cast<uint32_t>(li);
        MS_ASSIGN_OR_RETURN(child, shadow_child(node, i));
      }
      node = std::move(child);
    }
    node.reset();
    // An internal root with one child gives way to the child.
    for (;;) {
      MS_ASSIGN_OR_RETURN(BlockRef r, read_node(root_));
      NodeView rn(r.data());
      if (rn.leaf() || rn.nr() != 1) break;
      uint64_t only = rn.child(0);
      uint64_t old = root_;
      r.reset();
      MS_TRY(tm_.free_block(old));
      root_ = only;
    }
    return true;
  }

  // Visits every node depth first, checking what can be checked in the tree
  // itself: readable and valid blocks, node header, key order within nodes
  // and against the parent's bounds, equal leaf depth. Problems go to
  // `problem` (with where they are) and the walk goes on with the rest.
  void walk(const std::function<void(const NodeVisit&)>& on_node,
            const std::function<void(const Key&, const Value&)>& on_entry,
            const std::function<void(const std::string&)>& problem) {
    int leaf_depth = -1;
    walk_in(root_, 0, std::nullopt, std::nullopt, on_node, on_entry, problem, &leaf_depth);
  }

 private:
  static bool equal(const Key& a, const Key& b) { return !T::less(a, b) && !T::less(b, a); }
  static Key key_at(const NodeView& n, uint32_t i) { return T::decode_key(n.key(i)); }
  static Value value_at(const NodeView& n, uint32_t i) { return T::decode_value(n.value(i)); }
  static std::array<uint8_t, 8> child_bytes(uint64_t c) {
    std::array<uint8_t, 8> b;
    std::memcpy(b.data(), &c, 8);
    return b;
  }

  // Index of the last key <= k, or -1.
  static int last_le(const NodeView& n, const Key& k) {
    int lo = 0, hi = static_cast<int>(n.nr()) - 1, ans = -1;
    while (lo <= hi) {
      int mid = (lo + hi) / 2;
      if (T::less(k, key_at(n, static_cast<uint32_t>(mid)))) hi = mid - 1;
      else {
        ans = mid;
        lo = mid + 1;
      }
    }
    return ans;
  }
  // Index of the first key >= k (nr if none).
  static uint32_t lower_index(const NodeView& n, const Key& k) {
    uint32_t lo = 0, hi = n.nr();
    while (lo < hi) {
      uint32_t mid = (lo + hi) / 2;
      if (T::less(key_at(n, mid), k)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  Status check_node(const NodeView& n, uint64_t b) const {
    const NodeHeaderDisk& h = n.hdr();
    bool ok = h.tree_kind == T::kTreeKind && h.key_size == T::kKeySize &&
              h.value_size == (n.leaf() ? T::kValueSize : 8) && h.nr_entries <= n.max() &&
              (h.flags & ~kNodeLeaf) == 0;
    if (!ok)
      return make_error(Code::kCorruption,
                        "btree node at block {}: header does not fit tree {:#x} (kind {:#x}, sizes {}/{}, {} entries)",
                        b, T::kTreeKind, h.tree_kind, h.key_size, h.value_size, h.nr_entries);
    return Status::ok();
  }

  Result<BlockRef> read_node(uint64_t b) {
    MS_ASSIGN_OR_RETURN(BlockRef ref, tm_.read(b, BlockType::kBTreeNode));
    MS_TRY(check_node(NodeView(ref.data()), b));
    return ref;
  }

  Result<BlockRef> shadow_root() {
    MS_ASSIGN_OR_RETURN(BlockRef r, read_node(root_));
    bool moved = false;
    MS_ASSIGN_OR_RETURN(BlockRef s, tm_.shadow(r, &moved));
    root_ = s.blocknr();
    return s;
  }

  // Shadows child i of `parent` (a shadow) and repoints the parent if needed.
  Result<BlockRef> shadow_child(BlockRef& parent, uint32_t i) {
    NodeView p(parent.data());
    MS_ASSIGN_OR_RETURN(BlockRef c, read_node(p.child(i)));
    bool moved = false;
    MS_ASSIGN_OR_RETURN(BlockRef s, tm_.shadow(c, &moved));
    if (moved) NodeView(parent.mutable_data()).set_child(i, s.blocknr());
    return s;
  }

  // Splits the full child i of `parent` (both shadows) in two, to make room
  // for key k.
  //
  //   parent: [.. k_i ..]          parent: [.. k_i  k_s ..]
  //              |          ==>             |     |
  //   child:  [a b c d]            child: [a b] [c d] (new, first key k_s)
  //
  // When k goes past the child's last key (appending, as sequential writes
  // do) the left node stays full and the new one gets only the last entry,
  // so sequentially filled trees end up full rather than half full.
  Status split_child(BlockRef& parent, uint32_t i, const Key& k) {
    MS_ASSIGN_OR_RETURN(BlockRef child, shadow_child(parent, i));
    NodeView c(child.mutable_data());
    MS_ASSIGN_OR_RETURN(BlockRef sib, tm_.new_block(BlockType::kBTreeNode));
    NodeView s(sib.mutable_data());
    s.init(c.leaf(), T::kTreeKind, T::kKeySize, static_cast<uint16_t>(c.value_size()));
    bool appending = T::less(key_at(c, c.nr() - 1), k);
    uint32_t keep = appending ? c.nr() - 1 : c.nr() / 2;
    s.append_from(c, keep, c.nr() - keep);
    c.truncate(keep);
    NodeView(parent.mutable_data()).insert_at(i + 1, s.key(0), child_bytes(sib.blocknr()).data());
    return Status::ok();
  }

  // Gives child i of `parent` more entries, from a sibling: merges the two
  // when they fit comfortably in one node, else splits their entries evenly.
  Status rebalance(BlockRef& parent, uint32_t i) {
    NodeView p(parent.mutable_data());
    uint32_t li = (i + 1 < p.nr()) ? i : i - 1;  // left of the pair
    MS_ASSIGN_OR_RETURN(BlockRef left, shadow_child(parent, li));
    MS_ASSIGN_OR_RETURN(BlockRef right, shadow_child(parent, li + 1));
    NodeView l(left.mutable_data()), r(right.mutable_data());
    uint32_t total = l.nr() + r.nr();
    if (total <= l.max() * 3 / 4) {
      l.append_from(r, 0, r.nr());
      uint64_t gone = right.blocknr();
      right.reset();
      p.remove_at(li + 1);
      return tm_.free_block(gone);
    }
    uint32_t want_left = total / 2;
    if (l.nr() < want_left) {
      uint32_t n = want_left - l.nr();
      l.append_from(r, 0, n);
      r.drop_front(n);
    } else if (l.nr() > want_left) {
      uint32_t n = l.nr() - want_left;
      r.prepend_from(l, want_left, n);
      l.truncate(want_left);
    }
    std::memcpy(p.key(li + 1), r.key(0), T::kKeySize);
    return Status::ok();
  }

  Status lower_bound_in(uint64_t b, const Key& k, std::optional<Entry>* out) {
    MS_ASSIGN_OR_RETURN(BlockRef ref, read_node(b));
    NodeView n(ref.data());
    if (n.leaf()) {
      uint32_t i = lower_index(n, k);
      if (i < n.nr()) *out = Entry{key_at(n, i), value_at(n, i)};
      return Status::ok();
    }
    int start = std::max(0, last_le(n, k));
    for (uint32_t i = static_cast<uint32_t>(start); i < n.nr() && !*out; ++i)
      MS_TRY(lower_bound_in(n.child(i), k, out));
    return Status::ok();
  }

  Status floor_in(uint64_t b, const Key& k, std::optional<Entry>* out) {
    MS_ASSIGN_OR_RETURN(BlockRef ref, read_node(b));
    NodeView n(ref.data());
    int i = last_le(n, k);
    if (n.leaf()) {
      if (i >= 0) *out = Entry{key_at(n, static_cast<uint32_t>(i)), value_at(n, static_cast<uint32_t>(i))};
      return Status::ok();
    }
    // A separator is only a lower bound, so the floor may sit in an earlier child.
    for (; i >= 0 && !*out; --i) MS_TRY(floor_in(n.child(static_cast<uint32_t>(i)), k, out));
    return Status::ok();
  }

  Status scan_in(uint64_t b, const Key& from, const std::function<bool(const Key&, const Value&)>& fn,
                 bool* stop) {
    MS_ASSIGN_OR_RETURN(BlockRef ref, read_node(b));
    NodeView n(ref.data());
    if (n.leaf()) {
      for (uint32_t i = lower_index(n, from); i < n.nr() && !*stop; ++i)
        if (!fn(key_at(n, i), value_at(n, i))) *stop = true;
      return Status::ok();
    }
    int start = std::max(0, last_le(n, from));
    for (uint32_t i = static_cast<uint32_t>(start); i < n.nr() && !*stop; ++i)
      MS_TRY(scan_in(n.child(i), from, fn, stop));
    return Status::ok();
  }

  void walk_in(uint64_t b, uint32_t depth, std::optional<Key> lo, std::optional<Key> hi,
               const std::function<void(const NodeVisit&)>& on_node,
               const std::function<void(const Key&, const Value&)>& on_entry,
               const std::function<void(const std::string&)>& problem, int* leaf_depth) {
    auto ref = tm_.read(b, BlockType::kBTreeNode);
    if (!ref.is_ok()) {
      problem(fmt::format("tree {:#x}, depth {}: {} (keys from {} to {} lost)", T::kTreeKind, depth,
                          ref.status().to_string(), lo ? T::key_string(*lo) : "start",
                          hi ? T::key_string(*hi) : "end"));
      return;
    }
    NodeView n(ref->data());
    Status s = check_node(n, b);
    if (!s.is_ok()) {
      problem(s.to_string());
      return;
    }
    on_node({b, depth, n.leaf(), n.nr()});
    if (n.nr() == 0 && depth > 0) problem(fmt::format("btree node at block {}: empty non-root node", b));
    for (uint32_t i = 0; i < n.nr(); ++i) {
      Key k = key_at(n, i);
      if (i > 0 && !T::less(key_at(n, i - 1), k))
        problem(fmt::format("btree node at block {}: key {} is not above key {}", b, T::key_string(k),
                            T::key_string(key_at(n, i - 1))));
      if (lo && T::less(k, *lo))
        problem(fmt::format("btree node at block {}: key {} is below its parent's bound {}", b,
                            T::key_string(k), T::key_string(*lo)));
      if (hi && !T::less(k, *hi))
        problem(fmt::format("btree node at block {}: key {} is not below its parent's bound {}", b,
                            T::key_string(k), T::key_string(*hi)));
    }
    if (n.leaf()) {
      if (*leaf_depth < 0) *leaf_depth = static_cast<int>(depth);
      else if (*leaf_depth != static_cast<int>(depth))
        problem(fmt::format("btree leaf at block {} is at depth {}, others at {}", b, depth, *leaf_depth));
      for (uint32_t i = 0; i < n.nr(); ++i) on_entry(key_at(n, i), value_at(n, i));
      return;
    }
    std::vector<std::pair<uint64_t, Key>> children;
    for (uint32_t i = 0; i < n.nr(); ++i) children.emplace_back(n.child(i), key_at(n, i));
    ref->reset();  // do not pin the whole tree while walking it
    for (size_t i = 0; i < children.size(); ++i) {
      std::optional<Key> child_hi = i + 1 < children.size() ? std::optional<Key>(children[i + 1].second) : hi;
      walk_in(children[i].first, depth + 1, children[i].second, child_hi, on_node, on_entry, problem,
              leaf_depth);
    }
  }

  TransactionManager& tm_;
  uint64_t root_;
};

}  // namespace multisnap
