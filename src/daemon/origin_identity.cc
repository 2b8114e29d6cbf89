#include "daemon/origin_identity.h"

#include <sys/stat.h>
#include <sys/xattr.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "store/tree_traits.h"
#include "util/units.h"

namespace multisnap {

using Json = nlohmann::json;

std::string to_property(const OriginIdentity& id) {
  Json j{{"v", 1}, {"uuid", id.uuid}, {"size", id.size}, {"dev", id.dev}, {"ino", id.ino}};
  Json with_path = j;
  with_path["path"] = id.path;
  std::string text = with_path.dump();
  return text.size() <= kMaxPropertyBytes ? text : j.dump();
}

Result<OriginIdentity> origin_from_property(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  auto bad = [] { return make_error(Code::kCorruption, "the store's origin identity (property 3) is damaged"); };
  if (!j.is_object() || j.value("v", 0) != 1) return bad();
  OriginIdentity id;
  try {
    id.uuid = j.at("uuid").get<std::string>();
    id.size = j.at("size").get<uint64_t>();
    id.dev = j.at("dev").get<uint64_t>();
    id.ino = j.at("ino").get<uint64_t>();
    if (j.contains("path")) id.path = j["path"].get<std::string>();
  } catch (const Json::exception&) {
    return bad();
  }
  return id;
}

std::string absolute_path(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

Result<OriginIdentity> observe_origin(const FileDevice& origin) {
  struct stat st;
  if (::fstat(origin.fd(), &st) != 0) return errno_status(errno, "cannot stat " + origin.path());
  OriginIdentity id;
  id.size = origin.size();
  id.path = absolute_path(origin.path());
  if (S_ISBLK(st.st_mode)) {
    id.dev = st.st_rdev;
  } else {
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    char value[64];
    ssize_t n = ::fgetxattr(origin.fd(), kOriginXattr, value, sizeof value);
    if (n > 0) id.uuid.assign(value, static_cast<size_t>(n));
  }
  return id;
}

bool mark_origin(const FileDevice& origin, const std::string& uuid) {
  struct stat st;
  if (::fstat(origin.fd(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  return ::fsetxattr(origin.fd(), kOriginXattr, uuid.data(), uuid.size(), 0) == 0;
}

Status check_origin(const OriginIdentity& recorded, const OriginIdentity& seen, bool force,
                    std::vector<std::string>* warnings) {
  const bool marked_same = !seen.uuid.empty() && seen.uuid == recorded.uuid;
  const bool marked_other = !seen.uuid.empty() && seen.uuid != recorded.uuid;
  const bool same_file = seen.dev == recorded.dev && seen.ino == recorded.ino;
  const bool same = marked_same || (!marked_other && same_file);
  const bool same_size = seen.size == recorded.size;
  std::string was = recorded.path.empty() ? std::string("the recorded origin") : recorded.path;
  if (marked_other && !force)
    return make_error(Code::kInvalidArgument,
                      "{} is the origin of another store (its {} is {}, this store's origin is {}); pass --force "
                      "to serve it anyway",
                      seen.path, kOriginXattr, seen.uuid, recorded.uuid);
  if (!same && !same_size && !force)
    return make_error(Code::kInvalidArgument,
                      "{} is not the origin this store was made for: it is not the file {} was ({}), and it has "
                      "{} bytes where the origin had {}; pass --force to serve it anyway",
                      seen.path, was, marked_other ? "marked for another store" : "another file or device",
                      seen.size, recorded.size);
  if (!same)
    warnings->push_back(fmt::format(
        "{} may not be the origin this store was made for (it is not the file {} was{}){}; snapshots read "
        "wrong data if it is not. `serve --origin {} --save` records it as the origin",
        seen.path, was, marked_other ? ", and is marked for another store" : "",
        same_size ? ", but it has the same size: serving it" : ", served because of --force", seen.path));
  if (seen.size > recorded.size)
    warnings->push_back(fmt::format(
        "the origin {} grew from {} to {} bytes; only the first {} are served (a store's volume size is "
        "fixed at create: make a new store for the new size)",
        seen.path, recorded.size, seen.size, format_size(recorded.size)));
  return Status::ok();
}

}  // namespace multisnap
