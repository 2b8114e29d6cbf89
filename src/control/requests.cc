#include "control/requests.h"

#include "util/units.h"

namespace multisnap::control {

Result<SnapshotCreateArgs> parse_snapshot_create(const Json& request) {
  SnapshotCreateArgs args;
  MS_ASSIGN_OR_RETURN(args.of, optional_snapshot(request, "of"));
  if (args.of && args.of->is_name("origin")) args.of.reset();
  MS_ASSIGN_OR_RETURN(std::optional<std::string> name, optional_string(request, "name"));
  args.name = name.value_or("");
  return args;
}

Result<SnapshotDeleteArgs> parse_snapshot_delete(const Json& request) {
  SnapshotDeleteArgs args;
  MS_ASSIGN_OR_RETURN(std::optional<std::vector<SnapshotRef>> many,
                      optional_snapshots(request, "snapshots", kMaxDeleteBatch));
  if (many) {
    MS_ASSIGN_OR_RETURN(std::optional<SnapshotRef> one, optional_snapshot(request, "snapshot"));
    if (one) return make_error(Code::kInvalidArgument, "give \"snapshot\" or \"snapshots\", not both");
    args.snapshots = std::move(*many);
    args.batch = true;
  } else {
    MS_ASSIGN_OR_RETURN(SnapshotRef one, required_snapshot(request, "snapshot"));
    args.snapshots.push_back(std::move(one));
  }
  MS_ASSIGN_OR_RETURN(args.force, bool_or(request, "force", false));
  return args;
}

Result<SnapshotListArgs> parse_snapshot_list(const Json& request) {
  SnapshotListArgs args;
  MS_ASSIGN_OR_RETURN(args.space, bool_or(request, "space", false));
  return args;
}

Result<SendArgs> parse_send(const Json& request) {
  SendArgs args;
  MS_ASSIGN_OR_RETURN(args.snapshot, required_snapshot(request, "snapshot"));
  MS_ASSIGN_OR_RETURN(args.from, optional_snapshot(request, "from"));
  MS_ASSIGN_OR_RETURN(args.compress, bool_or(request, "compress", false));
  return args;
}

Result<ReceiveArgs> parse_receive(const Json& request) {
  ReceiveArgs args;
  MS_ASSIGN_OR_RETURN(std::optional<std::string> name, optional_string(request, "name"));
  args.name = name.value_or("");
  return args;
}

Result<RollbackArgs> parse_rollback(const Json& request) {
  RollbackArgs args;
  MS_ASSIGN_OR_RETURN(args.snapshot, required_snapshot(request, "snapshot"));
  MS_ASSIGN_OR_RETURN(args.force, bool_or(request, "force", false));
  return args;
}

Result<GrowArgs> parse_grow(const Json& request) {
  GrowArgs args;
  if (request.contains("store_size") && request["store_size"].is_string()) {
    MS_ASSIGN_OR_RETURN(std::optional<std::string> given, optional_string(request, "store_size", 64));
    const std::string text = given.value_or("");
    auto size = parse_size(text);
    if (!size.is_ok() || *size == 0)
      return make_error(Code::kInvalidArgument, "field 'store_size': '{}' is not a size (bytes, or 64G, 1T, ...)",
                        text);
    args.store_size = *size;
    return args;
  }
  MS_ASSIGN_OR_RETURN(std::optional<uint64_t> bytes, optional_uint(request, "store_size", 1));
  if (bytes) args.store_size = *bytes;
  return args;
}

}  // namespace multisnap::control
