#include "io/block_device.h"

#include <algorithm>
#include <vector>

namespace multisnap {

Status BlockDevice::check_range(uint64_t offset, uint64_t len) const {
  if (offset > size() || len > size() - offset)
    return make_error(Code::kOutOfRange, "{}: range {}+{} is past the end ({} bytes)", describe(),
                      offset, len, size());
  return Status::ok();
}

Status BlockDevice::preallocate(uint64_t, uint64_t) { return Status::ok(); }

Status BlockDevice::write_zeroes(uint64_t offset, uint64_t len) {
  MS_TRY(check_range(offset, len));
  static const std::vector<char> zeros(1 << 20, 0);
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, zeros.size()));
    MS_TRY(write(offset, zeros.data(), n));
    offset += n;
    len -= n;
  }
  return Status::ok();
}

Result<std::vector<BlockDevice::Extent>> BlockDevice::allocation(uint64_t offset, uint64_t len) {
  MS_TRY(check_range(offset, len));
  return std::vector<Extent>{{len, false}};
}

Result<bool> BlockDevice::is_hole(uint64_t offset, uint64_t len) {
  MS_ASSIGN_OR_RETURN(std::vector<Extent> extents, allocation(offset, len));
  return extents.size() == 1 && extents.front().hole;
}

Status BlockDevice::write_fua(uint64_t offset, const void* buf, size_t len) {
  MS_TRY(write(offset, buf, len));
  return flush();
}

Result<uint64_t> BlockDevice::resize(uint64_t) {
  return make_error(Code::kNotSupported, "{} cannot be resized", describe());
}

}  // namespace multisnap
