// A formatted, empty metadata layer on an in-memory device.
#pragma once

#include <gtest/gtest.h>

#include "support/memory_device.h"
#include "meta/transaction.h"

namespace multisnap::testing {

inline Superblock make_superblock(uint64_t store_size, uint32_t chunk = 4096, uint64_t meta_size = 0,
                                  uint32_t version = kFormatVersion) {
  LayoutRequest req;
  req.version = version;
  req.store_size = store_size;
  req.chunk_size = chunk;
  req.origin_size = 1 << 20;
  if (meta_size) req.metadata_size = meta_size;
  Superblock sb;
  sb.layout = std::move(compute_layout(req)).value();
  for (size_t i = 0; i < 16; ++i) sb.uuid[i] = static_cast<uint8_t>(i * 7 + 1);
  sb.origin_path = "/tmp/origin.img";
  return sb;
}

inline std::unique_ptr<TransactionManager> open_tm(BlockDevice& dev, size_t cache = 1 << 20) {
  TmOptions o;
  o.cache_bytes = cache;
  auto r = TransactionManager::open(dev, o);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

}  // namespace multisnap::testing
