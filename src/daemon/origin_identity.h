// Which file or device is a store's origin (docs/design.md, "Origin
// identity"). `create` records it in store property 3 (docs/format.md);
// `serve` checks the origin it is about to open against it before anything
// touches the origin, and `serve --save` / `set-origin` record a new path.
//
// An origin's contents change with every write, so nothing in them can name
// it. What is recorded is outside them: the size, where it was (absolute
// path, st_dev and st_ino; st_rdev for a block device), and a random uuid
// that is also set as the extended attribute user.multisnap.origin on the
// origin file where the filesystem allows (it follows `mv`, `cp -a`,
// `rsync -X`; never on block devices).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/file_device.h"
#include "util/status.h"

namespace multisnap {

constexpr const char* kOriginXattr = "user.multisnap.origin";

struct OriginIdentity {
  std::string uuid;      // 36 characters
  uint64_t size = 0;     // the volume size the store serves
  uint64_t dev = 0;      // st_dev of a file, st_rdev of a block device
  uint64_t ino = 0;      // st_ino of a file, 0 for a block device
  std::string path;      // absolute; empty: the superblock's (too long to fit the property)
};

// The property's value: compact JSON, at most 254 bytes (the path is left
// out when it would not fit).
std::string to_property(const OriginIdentity& id);
Result<OriginIdentity> origin_from_property(std::string_view text);

// What an open origin looks like now: size, dev and ino, absolute path, and
// the xattr if set. `uuid` is the xattr's value (empty when there is none).
Result<OriginIdentity> observe_origin(const FileDevice& origin);

// Sets the xattr on `origin` to `uuid`; false where the filesystem (or a
// block device) does not take it. Never fails otherwise.
bool mark_origin(const FileDevice& origin, const std::string& uuid);

// Whether `seen` may be served as the origin `recorded` describes. Refused
// (kInvalidArgument) unless `force`: an origin marked for another store, or
// one that is neither recognisably the recorded one (same xattr, or same
// dev and ino) nor of the recorded size. Anything else suspicious is served
// with a sentence in `warnings`: an origin not recognisably the same but of
// the same size, and an origin that grew (served at the recorded size).
Status check_origin(const OriginIdentity& recorded, const OriginIdentity& seen, bool force,
                    std::vector<std::string>* warnings);

// The absolute form of `path` (realpath), or `path` itself if that fails.
std::string absolute_path(const std::string& path);

}  // namespace multisnap
