// libFuzzer target for the replication stream parser (src/stream/reader.h):
// any bytes are either a verified stream or a clear error, never a crash,
// an unchecked read or an extent outside the volume.
#include <cstdlib>
#include <cstring>
#include <variant>

#include "stream/reader.h"

using namespace multisnap;
using namespace multisnap::stream;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t pos = 0;
  StreamReader reader([&](uint8_t* buf, size_t len) -> Result<size_t> {
    size_t n = std::min(len, size - pos);
    std::memcpy(buf, data + pos, n);
    pos += n;
    return n;
  });
  auto header = reader.header();
  if (!header.is_ok()) return 0;
  const uint64_t volume = header->volume_size;
  uint64_t last_end = 0;
  for (int i = 0; i < 100000; ++i) {
    auto item = reader.next();
    if (!item.is_ok()) return 0;
    if (auto* d = std::get_if<DataExtent>(&*item)) {
      if (d->offset < last_end || d->offset + d->length > volume || d->length == 0) abort();
      volatile uint8_t sink = d->data[d->length - 1];  // the bytes must be readable
      (void)sink;
      last_end = d->offset + d->length;
    } else if (auto* z = std::get_if<ZeroExtent>(&*item)) {
      if (z->offset < last_end || z->length > volume || z->offset > volume - z->length) abort();
      last_end = z->offset + z->length;
    } else {
      return 0;  // END verified
    }
  }
  return 0;
}
