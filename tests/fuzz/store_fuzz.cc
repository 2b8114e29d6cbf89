// libFuzzer target for the metadata reader: a store with history is built
// once in memory; each input is a list of (block, offset, xor) damages to
// its metadata blocks (commit records, bitmaps, tree nodes). The damaged
// store is opened read-only, checked, listed and looked up: never a crash
// and never an unchecked read (ASan), whatever the damage.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "support/memory_device.h"
#include "store/exception_store.h"

using namespace multisnap;

namespace {
constexpr uint64_t kStoreSize = 32 << 20;

struct Base {
  std::vector<uint8_t> image;
  uint64_t meta_blocks = 0;  // blocks from 0 to the end of the metadata area
};

const Base& base() {
  static Base b = [] {
    Base out;
    MemoryDevice dev(kStoreSize);
    CreateOptions o;
    o.chunk_size = 4096;
    o.origin_size = 4 << 20;
    o.origin_path = "/dev/null";
    o.metadata_size = 1 << 20;
    if (!format_store(dev, o).is_ok()) abort();
    auto st = std::move(open_store(dev, {})).value();
    for (int round = 0; round < 3; ++round) {
      if (!st->create_snapshot(std::nullopt, "s" + std::to_string(round), 1).is_ok()) abort();
      for (uint64_t c = round; c < 600; c += 3) {
        st->reset_query(c);
        while (*st->query_next_remap()) {
          CopyDescriptor d;
          if (!st->add_next_remap(&d, c % 7 == 0).is_ok()) abort();
        }
      }
      if (!st->set_property(1, std::string("{\"every\":60}")).is_ok()) abort();
      if (!st->commit().is_ok()) abort();
    }
    out.meta_blocks = st->layout().meta_start + st->layout().meta_blocks;
    st.reset();
    out.image.resize(out.meta_blocks * 4096);
    if (!dev.read(0, out.image.data(), out.image.size()).is_ok()) abort();
    return out;
  }();
  return b;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Base& b = base();
  MemoryDevice dev(kStoreSize);
  std::vector<uint8_t> image = b.image;
  // Each 5 bytes: u16 block (mod the metadata area, block 0 spared so the
  // superblock's own checks are not all there is), u16 offset, u8 xor.
  for (size_t i = 0; i + 5 <= size && i < 5 * 64; i += 5) {
    uint64_t blk = 1 + (uint64_t(data[i]) | uint64_t(data[i + 1]) << 8) % (b.meta_blocks - 1);
    size_t off = (size_t(data[i + 2]) | size_t(data[i + 3]) << 8) % 4096;
    image[blk * 4096 + off] ^= data[i + 4] ? data[i + 4] : 1;
  }
  dev.poke(0, image.data(), image.size());
  TmOptions ro;
  ro.read_only = true;
  ro.cache_bytes = 1 << 20;
  auto st = open_store(dev, ro);
  if (!st.is_ok()) return 0;
  CheckReport report;
  (*st)->check(report);
  std::vector<SnapshotInfo> snaps;
  (void)(*st)->list_snapshots(0, [&](const SnapshotInfo& s) {
    snaps.push_back(s);
    return snaps.size() < 100;
  });
  for (const SnapshotInfo& s : snaps) {
    for (uint64_t c = 0; c < 1024; c += 97) (void)(*st)->lookup(c, s, true);
    (void)(*st)->diff(s, nullptr, 0, [](uint64_t) { return true; });
  }
  (void)(*st)->get_property(1);
  (void)(*st)->newest_snapshot();
  return 0;
}
