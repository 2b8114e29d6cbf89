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

// {"command": "snapshot-delete", "snapshot": REF, "force": BOOL|null}
struct SnapshotDeleteArgs {
  SnapshotRef snapshot;
  bool force = false;
};
Result<SnapshotDeleteArgs> parse_snapshot_delete(const Json& request);

}  // namespace multisnap::control
