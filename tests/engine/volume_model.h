// VolumeModel: what the engine tests expect one volume to hold, per
// 512-byte sector, through flushes and power cuts: the data now, the data as
// of the last flush point, and every sector version written since (any of
// which a crash may leave behind).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "util/checksum.h"

namespace multisnap::testing {

constexpr uint64_t kSector = 512;

inline uint64_t sector_hash(const uint8_t* p) { return checksum64(p, kSector, 99); }

struct VolumeModel {
  std::vector<uint8_t> data;     // what a read must return now
  std::vector<uint8_t> durable;  // what survives a crash for sure... or a version below
  std::unordered_map<uint64_t, std::unordered_set<uint64_t>> since;  // sector -> versions since

  void apply(uint64_t off, const uint8_t* bytes, uint64_t len) {
    if (bytes) std::memcpy(data.data() + off, bytes, len);
    else std::memset(data.data() + off, 0, len);
  }
  void note_versions(uint64_t off, uint64_t len) {
    for (uint64_t s = off / kSector; s * kSector < off + len; ++s) since[s].insert(sector_hash(&data[s * kSector]));
  }
  void flush_point() {
    durable = data;
    since.clear();
  }
  // Where `got` (the whole volume after a crash) breaks the model, or "".
  std::string explain(const std::vector<uint8_t>& got) const {
    for (uint64_t s = 0; s * kSector < got.size(); ++s) {
      const uint8_t* g = &got[s * kSector];
      if (std::memcmp(g, &durable[s * kSector], kSector) == 0) continue;
      auto it = since.find(s);
      if (it != since.end() && it->second.count(sector_hash(g))) continue;
      return "sector " + std::to_string(s) + " holds a version that was never written";
    }
    return "";
  }
};

}  // namespace multisnap::testing
