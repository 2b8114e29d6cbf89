// format_store / open_store: pick the exception store the superblock names.
#include <chrono>

#include "store/bitmask/bitmask_store.h"
#include "store/range/range_store.h"
#include "util/uuid.h"

namespace multisnap {

Status format_store(BlockDevice& dev, const CreateOptions& options) {
  LayoutRequest req;
  req.store_size = dev.size();
  req.chunk_size = options.chunk_size;
  req.origin_size = options.origin_size;
  req.metadata_size = options.metadata_size;
  req.max_store_size = options.max_store_size;
  req.version = options.format_version;
  MS_ASSIGN_OR_RETURN(Layout layout, compute_layout(req));
  Superblock sb;
  sb.format = store_format_code(options.format);
  MS_ASSIGN_OR_RETURN(Uuid uuid, random_uuid());
  sb.uuid = uuid.bytes;
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
  std::optional<StoreFormat> format = store_format_from_code(tm->superblock().format);
  if (!format)
    return make_error(Code::kCorruption, "{}: unknown store format {}", dev.describe(), tm->superblock().format);
  switch (*format) {
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
