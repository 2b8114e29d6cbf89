// format_store / open_store: pick the exception store the superblock names.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>

#include "store/bitmask/bitmask_store.h"
#include "store/range/range_store.h"

namespace multisnap {

namespace {
std::array<uint8_t, 16> random_uuid() {
  std::array<uint8_t, 16> u{};
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = ::read(fd, u.data(), u.size());
    (void)n;
    ::close(fd);
  }
  u[6] = static_cast<uint8_t>((u[6] & 0x0f) | 0x40);  // version 4
  u[8] = static_cast<uint8_t>((u[8] & 0x3f) | 0x80);
  return u;
}
}  // namespace

Status format_store(BlockDevice& dev, const CreateOptions& options) {
  LayoutRequest req;
  req.store_size = dev.size();
  req.chunk_size = options.chunk_size;
  req.origin_size = options.origin_size;
  req.metadata_size = options.metadata_size;
  MS_ASSIGN_OR_RETURN(Layout layout, compute_layout(req));
  Superblock sb;
  sb.format = options.format;
  sb.uuid = random_uuid();
  sb.created_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
  sb.layout = layout;
  sb.origin_path = options.origin_path;
  MS_TRY(TransactionManager::format(dev, sb));
  TmOptions tmo;
  tmo.cache_bytes = 4 << 20;
  MS_ASSIGN_OR_RETURN(auto tm, TransactionManager::open(dev, tmo));
  if (options.format == StoreFormat::kBitmask) return BitmaskStore::create(std::move(tm)).status();
  return RangeStore::create(std::move(tm)).status();
}

Result<std::unique_ptr<ExceptionStore>> open_store(BlockDevice& dev, const TmOptions& options) {
  MS_ASSIGN_OR_RETURN(auto tm, TransactionManager::open(dev, options));
  switch (tm->superblock().format) {
    case StoreFormat::kRange: {
      MS_ASSIGN_OR_RETURN(auto s, RangeStore::open(std::move(tm)));
      return std::unique_ptr<ExceptionStore>(std::move(s));
    }
    case StoreFormat::kBitmask: {
      MS_ASSIGN_OR_RETURN(auto s, BitmaskStore::open(std::move(tm)));
      return std::unique_ptr<ExceptionStore>(std::move(s));
    }
  }
  return make_error(Code::kCorruption, "{}: unknown store format", dev.describe());
}

}  // namespace multisnap
