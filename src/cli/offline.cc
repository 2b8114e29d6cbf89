// Commands that work on a store file directly: create, check, dump.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "daemon/daemon.h"
#include "daemon/origin_identity.h"
#include "util/uuid.h"
#include "io/file_device.h"
#include "util/clock.h"
#include "util/units.h"

namespace multisnap::cli {

namespace {

Result<uint64_t> optional_size(const std::string& text, uint64_t fallback) {
  if (text.empty()) return fallback;
  return parse_size(text);
}

bool exists(const std::string& path, struct stat* st) { return ::stat(path.c_str(), st) == 0; }


Result<std::unique_ptr<FileDevice>> open_origin(const CreateArgs& a, bool* created) {
  struct stat st;
  *created = false;
  if (!exists(a.origin, &st)) {
    if (a.origin_size.empty())
      return make_error(Code::kNotFound, "{} does not exist; give --origin-size to create it", a.origin);
    MS_ASSIGN_OR_RETURN(uint64_t size, parse_size(a.origin_size));
    if (size == 0) return make_error(Code::kInvalidArgument, "--origin-size must not be zero");
    FileDeviceOptions o;
    o.create = true;
    o.create_size = size;
    *created = true;
    return FileDevice::open(a.origin, o);
  }
  MS_ASSIGN_OR_RETURN(auto dev, FileDevice::open(a.origin));
  if (!a.origin_size.empty()) {
    MS_ASSIGN_OR_RETURN(uint64_t size, parse_size(a.origin_size));
    if (size != dev->size())
      return make_error(Code::kInvalidArgument, "{} already exists with {} bytes, not the {} --origin-size asks for",
                        a.origin, dev->size(), size);
  }
  if (dev->size() == 0) return make_error(Code::kInvalidArgument, "the origin {} is empty", a.origin);
  return dev;
}

Result<std::unique_ptr<FileDevice>> open_store_file(const CreateArgs& a, uint64_t origin_size) {
  struct stat st;
  bool present = exists(a.store, &st);
  if (present && (S_ISBLK(st.st_mode) || st.st_size > 0)) {
    MS_ASSIGN_OR_RETURN(auto dev, FileDevice::open(a.store));
    if (!a.force) {
      if (looks_like_store(*dev))
        return make_error(Code::kExists, "{} already holds a multisnap store; use --force to replace it", a.store);
      if (!S_ISBLK(st.st_mode))
        return make_error(Code::kExists, "{} exists and is not empty; use --force to overwrite it", a.store);
    }
    if (!a.store_size.empty() && !S_ISBLK(st.st_mode)) {
      // Resize only under the lock: it may be a store someone is serving.
      MS_TRY(lock_device(*dev, true));
      MS_ASSIGN_OR_RETURN(uint64_t size, parse_size(a.store_size));
      if (::ftruncate(dev->fd(), static_cast<off_t>(size)) != 0) return errno_status(errno, "cannot size " + a.store);
      return FileDevice::open(a.store);  // the lock stays with the first descriptor until exit
    }
    return dev;
  }
  // Default: room for every origin chunk four times over, plus metadata.
  // The file is sparse: it takes disk space only as chunks are copied.
  MS_ASSIGN_OR_RETURN(uint64_t size, optional_size(a.store_size, 4 * origin_size + (1ull << 30)));
  FileDeviceOptions o;
  o.create = true;
  o.create_size = size;
  return FileDevice::open(a.store, o);
}

// Records `origin` as the store's origin (property 3), keeping the uuid of
// `previous` if there is one, and marks the origin file with it.
Status record_origin(FileDevice& store_dev, const FileDevice& origin, const std::optional<OriginIdentity>& previous) {
  MS_ASSIGN_OR_RETURN(auto store, open_store(store_dev, TmOptions{}));
  MS_ASSIGN_OR_RETURN(OriginIdentity id, observe_origin(origin));
  id.size = store->layout().origin_size;
  if (previous) {
    id.uuid = previous->uuid;
  } else {
    MS_ASSIGN_OR_RETURN(Uuid u, random_uuid());
    id.uuid = u.to_string();
  }
  MS_TRY(store->set_property(kOriginProperty, to_property(id)));
  MS_TRY(store->commit());
  mark_origin(origin, id.uuid);
  return Status::ok();
}

}  // namespace

int run_set_origin(const std::string& store_path, const std::string& origin_path, bool force) {
  auto store = FileDevice::open(store_path);
  if (!store.is_ok()) return fail(store.status());
  Status s = lock_device(**store, true);
  if (!s.is_ok()) return fail(s);
  auto sb = read_superblock(**store);
  if (!sb.is_ok()) return fail(sb.status());
  auto recorded = read_origin_identity(**store);
  if (!recorded.is_ok()) return fail(recorded.status());
  auto origin = FileDevice::open(absolute_path(origin_path));
  if (!origin.is_ok()) return fail(origin.status());
  s = lock_device(**origin, true);
  if (!s.is_ok()) return fail(s);
  auto seen = observe_origin(**origin);
  if (!seen.is_ok()) return fail(seen.status());
  std::vector<std::string> warnings;
  if (*recorded) {
    (*recorded)->size = sb->layout.origin_size;
    s = check_origin(**recorded, *seen, force, &warnings);
    if (!s.is_ok()) return fail(s);
  }
  if (seen->size < sb->layout.origin_size)
    return fail(make_error(Code::kInvalidArgument, "{} has {} bytes; the store's origin has {}", seen->path,
                           seen->size, sb->layout.origin_size));
  for (const std::string& w : warnings) fprintf(stderr, "multisnap: warning: %s\n", w.c_str());
  s = record_origin(**store, **origin, *recorded);
  if (!s.is_ok()) return fail(s);
  printf("the origin of %s is now %s\n", store_path.c_str(), seen->path.c_str());
  return 0;
}

int run_create(const CreateArgs& a) {
  auto format = parse_store_format(a.format);
  if (!format) return fail(make_error(Code::kInvalidArgument, "--format must be range or bitmask, not '{}'", a.format));
  auto chunk = parse_size(a.chunk_size);
  if (!chunk.is_ok()) return fail(chunk.status());
  if (!is_power_of_two(*chunk) || *chunk < kMinChunkSize || *chunk > kMaxChunkSize)
    return fail(make_error(Code::kInvalidArgument, "--chunk-size {} must be a power of two from 4K to 1M", a.chunk_size));
  if (!a.store_size.empty() && !parse_size(a.store_size).is_ok()) return fail(parse_size(a.store_size).status());
  auto meta = optional_size(a.metadata_size, 0);
  if (!meta.is_ok()) return fail(meta.status());
  auto max_size = optional_size(a.max_store_size, 0);
  if (!max_size.is_ok()) return fail(max_size.status());
  bool origin_created = false;
  auto origin = open_origin(a, &origin_created);
  if (!origin.is_ok()) return fail(origin.status());
  struct stat before;
  bool store_existed = exists(a.store, &before);
  auto cleanup = [&] {  // leave nothing behind that this command made
    if (origin_created) ::unlink(a.origin.c_str());
    if (!store_existed) ::unlink(a.store.c_str());
  };
  Status s = lock_device(**origin, true);
  if (!s.is_ok()) return cleanup(), fail(s);
  auto store = open_store_file(a, (*origin)->size());
  if (!store.is_ok()) return cleanup(), fail(store.status());
  s = lock_device(**store, true);
  if (!s.is_ok()) return cleanup(), fail(s);
  CreateOptions co;
  co.format = *format;
  co.chunk_size = static_cast<uint32_t>(std::min<uint64_t>(*chunk, UINT32_MAX));
  co.origin_size = (*origin)->size();
  co.origin_path = absolute_path(a.origin);
  if (*meta) co.metadata_size = *meta;
  if (*max_size) co.max_store_size = *max_size;
  if (a.preallocate) {
    s = (*store)->preallocate(0, (*store)->size());
    if (!s.is_ok()) return cleanup(), fail(s.annotate("cannot preallocate the store"));
  }
  s = format_store(**store, co);
  if (!s.is_ok()) return cleanup(), fail(s.annotate("cannot create the store"));
  s = record_origin(**store, **origin, std::nullopt);
  if (!s.is_ok()) return cleanup(), fail(s.annotate("cannot record the origin"));
  auto sb = read_superblock(**store);
  if (!sb.is_ok()) return fail(sb.status());
  const Layout& l = sb->layout;
  printf("created %s: %s store, %s chunks, origin %s (%s); %s for data, a %s metadata pool (metadata grows into "
         "data space past it); `multisnap grow` can take it to %s\n", a.store.c_str(),
         store_format_name(*format), format_size(l.chunk_size).c_str(), co.origin_path.c_str(),
         format_size(co.origin_size).c_str(), format_size(l.data_chunks * l.chunk_size).c_str(),
         format_size(l.meta_blocks * kBlockSize).c_str(),
         format_size(l.data_start + l.capacity_chunks() * l.chunk_size).c_str());
  return 0;
}

namespace {
Result<std::unique_ptr<ExceptionStore>> open_read_only(const std::string& path, std::unique_ptr<FileDevice>* dev) {
  FileDeviceOptions fo;
  fo.read_only = true;
  MS_ASSIGN_OR_RETURN(*dev, FileDevice::open(path, fo));
  MS_TRY(lock_device(**dev, false));
  TmOptions tmo;
  tmo.read_only = true;
  tmo.cache_bytes = 64ull << 20;
  return open_store(**dev, tmo);
}
}  // namespace

Result<GrowResult> grow_offline(const std::string& path, uint64_t store_bytes) {
  MS_ASSIGN_OR_RETURN(auto dev, FileDevice::open(path));
  MS_TRY(lock_device(*dev, true));
  MS_ASSIGN_OR_RETURN(auto store, open_store(*dev, TmOptions{}));
  MS_ASSIGN_OR_RETURN(GrowResult g, grow_store(*store, *dev, store_bytes));
  MS_TRY(store->commit());
  return g;
}

int run_check(const std::string& path, bool json) {
  std::unique_ptr<FileDevice> dev;
  CheckReport report;
  auto store = open_read_only(path, &dev);
  if (!store.is_ok()) {
    if (store.status().code() != Code::kCorruption) return fail(store.status());
    report.problem(store.status().to_string());
  } else {
    for (const CommitRecordFinding& f : (*store)->commit_findings()) {
      if (f.serious) report.problem(f.text);
      else report.warning(f.text);
    }
    (*store)->check(report);
    std::string origin_path = (*store)->origin_path();
    auto text = (*store)->get_property(kOriginProperty);
    if (!text.is_ok()) {
      report.problem(text.status().to_string());
    } else if (*text) {
      auto id = origin_from_property(**text);
      if (!id.is_ok()) report.problem(id.status().to_string());
      else if (!id->path.empty()) origin_path = id->path;
    }
    struct stat st;
    if (::stat(origin_path.c_str(), &st) != 0) report.note("the origin " + origin_path + " is missing");
  }
  if (json) {
    nlohmann::json j{{"store", path}, {"clean", report.clean()}, {"problems", report.problems()},
                     {"warnings", report.warnings()}, {"notes", report.notes()}};
    printf("%s\n", j.dump(2).c_str());
  } else {
    for (const auto& p : report.problems()) printf("problem: %s\n", p.c_str());
    for (const auto& w : report.warnings()) printf("WARNING: %s\n", w.c_str());
    for (const auto& n : report.notes()) printf("%s\n", n.c_str());
    if (report.clean() && !report.warnings().empty())
      printf("%s: clean, with %zu warning%s (nothing is lost; `serve` rewrites damaged commit record copies)\n",
             path.c_str(), report.warnings().size(), report.warnings().size() == 1 ? "" : "s");
    else if (report.clean()) printf("%s: clean\n", path.c_str());
    else printf("%s: %zu problem%s found\n", path.c_str(), report.problems().size(),
                report.problems().size() == 1 ? "" : "s");
  }
  return report.clean() ? 0 : 1;
}

int run_dump(const std::string& path, bool json) {
  std::unique_ptr<FileDevice> dev;
  auto store = open_read_only(path, &dev);
  if (!store.is_ok()) return fail(store.status());
  ExceptionStore& st = **store;
  StoreStats s = st.stats();
  if (json) printf("{\"format\":\"%s\",\"chunk_size\":%u,\"origin_size\":%llu,\"snapshots\":[", s.format, s.chunk_size,
                   static_cast<unsigned long long>(s.origin_size));
  else printf("%s store, %u-byte chunks, %llu snapshots, %llu exceptions\n", s.format, s.chunk_size,
              static_cast<unsigned long long>(s.snapshots), static_cast<unsigned long long>(s.exceptions));
  bool first = true;
  // Parents come before their snapshots in ID order: remember the names of
  // those that have any.
  std::map<SnapshotId, std::string> parent_names;
  Status ls = st.list_snapshots(0, [&](const SnapshotInfo& info) {
    if (info.children > 0) parent_names[info.id] = info.name;
    std::string parent_name = info.parent ? parent_names[info.parent] : std::string();
    if (json) printf("%s%s", first ? "" : ",", snapshot_json(info, parent_name).dump().c_str());
    else printf("snapshot %u%s%s of %s, created %s\n", info.id, info.name.empty() ? "" : " ", info.name.c_str(),
                info.parent ? ("snapshot " + std::to_string(info.parent) +
                               (parent_name.empty() ? "" : " " + parent_name)).c_str()
                            : "the origin",
                iso8601(info.created_ns).c_str());
    first = false;
    return true;
  });
  if (json) printf("],\"mappings\":[");
  first = true;
  Status ds = st.dump([&](const DumpEntry& e) {
    if (json) {
      nlohmann::json j{{"chunk", e.chunk}, {"snapshots", e.snapshots}, {"live", e.live}};
      j["store_chunk"] = e.zero ? nlohmann::json(nullptr) : nlohmann::json(e.store_chunk);
      j["zero"] = e.zero;
      printf("%s%s", first ? "" : ",", j.dump().c_str());
    } else {
      std::string live;
      for (SnapshotId id : e.live) live += (live.empty() ? "" : ",") + std::to_string(id);
      if (e.zero) printf("chunk %llu: snapshots %s -> zeros (live: %s)\n", static_cast<unsigned long long>(e.chunk),
                         e.snapshots.c_str(), live.c_str());
      else printf("chunk %llu: snapshots %s -> store chunk %llu (live: %s)\n", static_cast<unsigned long long>(e.chunk),
                  e.snapshots.c_str(), static_cast<unsigned long long>(e.store_chunk), live.c_str());
    }
    first = false;
    return true;
  });
  if (json) printf("]}\n");
  if (!ls.is_ok()) return fail(ls);
  if (!ds.is_ok()) return fail(ds);
  return 0;
}

}  // namespace multisnap::cli
