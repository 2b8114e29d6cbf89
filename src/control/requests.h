// The arguments of each control command, decoded from a request object
// through the typed accessors of fields.h (docs/control.md, "Commands").
// Kept apart from the Daemon so they can be tested and fuzzed without an
// engine or sockets. A decoder checks types and ranges only; whether a
// snapshot exists or a name is acceptable is the engine's to say.
//
// Thread-safe: pure functions of their arguments.
#pragma once

#include <optional>
#include <string>

#include "control/fields.h"

namespace multisnap::control {

// {"command": "snapshot-create", "of": REF|"origin"|null, "name": STRING|null}
struct SnapshotCreateArgs {
  std::optional<SnapshotRef> of;  // nullopt: the origin
  std::string name;               // empty: no name
};
Result<SnapshotCreateArgs> parse_snapshot_create(const Json& request);

// {"command": "snapshot-delete", "snapshot": REF, "force": BOOL|null}, or
// with "snapshots": [REF, ...] (1 to kMaxDeleteBatch, no "snapshot"): all of
// them or none, in one commit.
constexpr size_t kMaxDeleteBatch = 4096;
struct SnapshotDeleteArgs {
  std::vector<SnapshotRef> snapshots;  // one with "snapshot"
  bool batch = false;                  // "snapshots" was given: answer with a list
  bool force = false;
};
Result<SnapshotDeleteArgs> parse_snapshot_delete(const Json& request);

// {"command": "snapshot-list", "space": BOOL|null}
struct SnapshotListArgs {
  bool space = false;  // add exclusive_bytes and shared_bytes (a pass over the exceptions)
};
Result<SnapshotListArgs> parse_snapshot_list(const Json& request);

// {"command": "send", "snapshot": REF, "from": REF|null, "compress": BOOL|null}
struct SendArgs {
  SnapshotRef snapshot;
  std::optional<SnapshotRef> from;  // nullopt: a full stream
  bool compress = false;
};
Result<SendArgs> parse_send(const Json& request);

// {"command": "receive", "name": STRING|null}
struct ReceiveArgs {
  std::string name;  // empty: the sent snapshot's
};
Result<ReceiveArgs> parse_receive(const Json& request);

// {"command": "rollback", "snapshot": REF, "force": BOOL|null}
struct RollbackArgs {
  SnapshotRef snapshot;
  bool force = false;
};
Result<RollbackArgs> parse_rollback(const Json& request);

// {"command": "grow", "store_size": UINT|STRING|null}: bytes, or a size
// with a suffix ("64G"); null or absent: the device's size now.
struct GrowArgs {
  uint64_t store_size = 0;  // 0: take the device's size
};
Result<GrowArgs> parse_grow(const Json& request);

}  // namespace multisnap::control
