// grow_store: the checks and steps of `multisnap grow` that the engine
// (online) and the offline command share.
#include "store/exception_store.h"
#include "util/units.h"

namespace multisnap {

Result<GrowResult> grow_store(ExceptionStore& st, BlockDevice& dev, uint64_t store_bytes) {
  const Layout& l = st.layout();
  GrowResult g;
  g.old_bytes = l.store_size;
  g.old_chunks = l.data_chunks;
  g.max_bytes = l.data_start + l.capacity_chunks() * l.chunk_size;
  // Everything that can be said no to is said before the device is touched.
  if (!l.growable())
    return make_error(Code::kNotSupported,
                      "this store (format version {}) was made without room to grow; create a new store (with "
                      "--max-store-size for room) and move the data over with send and receive",
                      l.version);
  if (!st.failure().is_ok()) return st.failure();
  if (store_bytes != 0) {
    if (store_bytes > g.max_bytes)
      return make_error(Code::kInvalidArgument,
                        "the store can grow to {} at most ({} bytes; the room is made at create: --max-store-size), "
                        "not {}",
                        format_size(g.max_bytes), g.max_bytes, format_size(store_bytes));
    if (store_bytes <= l.store_size)
      return make_error(Code::kInvalidArgument, "the store is already {} ({} bytes); a store never shrinks",
                        format_size(l.store_size), l.store_size);
    if (l.chunks_for_device(store_bytes) <= l.data_chunks)
      return make_error(Code::kInvalidArgument,
                        "{} bytes add no whole chunk to the store: its data area ends at byte {} and a chunk is {}",
                        store_bytes, l.data_start + l.data_chunks * l.chunk_size, l.chunk_size);
  }
  auto device = dev.resize(store_bytes);
  if (!device.is_ok()) {
    // A failed fsync may have dropped pages the next commit relies on: the
    // store fails, as after any failed flush (transaction.h, invariant 5).
    if (device.status().code() == Code::kIoError) return st.fail(device.status().annotate("growing the store"));
    return device.status();
  }
  const uint64_t target = (store_bytes ? store_bytes : std::min(*device, g.max_bytes)) / 4096 * 4096;
  const uint64_t chunks = l.chunks_for_device(target);
  if (chunks <= l.data_chunks)
    return make_error(Code::kInvalidArgument,
                      "nothing to grow: the store device has {} bytes and the store's data area ends at byte {} (a "
                      "chunk is {}); give a larger size or grow the device first",
                      *device, l.data_start + l.data_chunks * l.chunk_size, l.chunk_size);
  MS_TRY(st.grow(chunks, std::max(target, l.data_start + chunks * l.chunk_size)));
  g.new_bytes = l.store_size;
  g.new_chunks = l.data_chunks;
  g.added_bytes = (g.new_chunks - g.old_chunks) * l.chunk_size;
  return g;
}

}  // namespace multisnap
