// Replication in the daemon: the `send`, `receive` and `receive-abort`
// control commands (docs/control.md, "Streams"; docs/replication.md).
//
//  * send streams a snapshot (full) or what differs from a base
//    (incremental) over the control connection. The changed chunks come
//    from the store's metadata (Engine::changed_chunks); only they are read.
//  * receive applies a stream to the origin (copy-on-write keeps every
//    existing snapshot as it was), then creates the snapshot with the
//    sender's uuid in the same commit that ends the receive. Before its first
//    origin write the receive is recorded as pending; after a crash or a
//    lost connection the same receive completes it, `receive --abort` undoes
//    it. A stream refused part way is undone before the answer.
//
// Thread-safe: runs on control connection threads; one receive at a time.
#pragma once

#include <mutex>
#include <optional>
#include <string_view>

#include "control/control.h"
#include "engine/engine.h"

namespace multisnap {

// snapshot-list --space's figures for one snapshot.
struct SnapshotSpaceBytes {
  uint64_t exclusive = 0;
  uint64_t shared = 0;
};
// Appends a snapshot object (docs/control.md) as compact JSON text, with
// "exclusive_bytes" and "shared_bytes" when `space` is given: "of" is null
// for a snapshot of the origin, else {"id": parent, "name": parent_name or
// null}. Formatted by hand, not through a Json object: snapshot-list
// formats a million of them (that took 3.6 s through Json). The keys come
// in nlohmann's order (sorted) and strings go through
// control::append_json_string, so the text is byte for byte what
// control::to_text of the Json object gave.
void append_snapshot_json(std::string& out, const SnapshotInfo& s, std::string_view parent_name,
                          const SnapshotSpaceBytes* space = nullptr);
// The same object as Json, parsed from that text (the two cannot differ).
control::Json snapshot_json(const SnapshotInfo& s, std::string_view parent_name = {});
// The name of s's parent; empty for the origin, a parent without a name,
// or one that is gone (or cannot be read now: it still has its ID).
std::string parent_name(Engine& engine, const SnapshotInfo& s);
// snapshot_json with the parent's name looked up in the engine.
control::Json snapshot_json(Engine& engine, const SnapshotInfo& s);

class Replication {
 public:
  explicit Replication(Engine& engine) : engine_(engine) {}

  // Answers (or streams) a send; `base` null for a full stream.
  std::optional<control::Json> send(const SnapshotInfo& target, const std::optional<SnapshotInfo>& base,
                                    bool compress, control::Writer& out);
  std::optional<control::Json> receive(const std::string& name, control::Writer& out);
  control::Json receive_abort();
  // Refuses deleting the base of a pending receive.
  Status may_delete(SnapshotId id);

 private:
  // Returns the origin to the pending receive's base and clears it.
  Status undo_pending();

  Engine& engine_;
  // One receive at a time. A receive whose client just died may still be
  // winding down, so others wait for it a little before they give up
  // (lock_receive() in replication.cc).
  std::mutex receive_mu_;
};

}  // namespace multisnap
