// The client side of snapshot-list (docs/control.md): its answer is one
// line of about 160 bytes a snapshot (160 MB at a million), streamed by the
// server with "ok" last. It is parsed as it arrives, through nlohmann's SAX
// interface: each snapshot object fills a SnapshotRow, which is handed over
// and reused, and no Json value is built for it (building one per snapshot
// and the whole line in memory took 5.8 s at a million).
//
// A list that failed half-way ("ok": false after the snapshots), an answer
// that is not JSON, ends early, or has a snapshot field of the wrong type is
// an error: the rows handed over until then are not the list, and a caller
// must drop them (print only once the read succeeded).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "control/control.h"

namespace multisnap::control {

// One snapshot object of the answer. The fields the server always sends are
// required (id, name, of, created, export), the others may be absent.
struct SnapshotRow {
  uint64_t id = 0;
  bool has_name = false;  // "name": null when false
  std::string name;
  bool of_origin = true;  // "of": null; else {"id": of_id, "name": of_name or null}
  uint64_t of_id = 0;
  bool of_has_name = false;
  std::string of_name;
  std::string created;
  std::string export_name;
  bool has_uuid = false;
  std::string uuid;
  std::optional<bool> written;
  std::optional<uint64_t> exclusive_bytes;
  std::optional<uint64_t> shared_bytes;
  // Fields this client does not know (from a newer server), kept so that
  // --json prints them as before; null when there are none.
  Json extra;
};

// The object as the server sent it (keys in nlohmann's order).
Json to_json(const SnapshotRow& row);
// Appends to_json(row).dump(2) with each line after the first indented by
// two more spaces: an element of the list as list.dump(2) prints it, which
// is what `snapshot list --json` prints. Formatted by hand unless the row
// has unknown fields.
void append_list_element(std::string& out, const SnapshotRow& row);

using SnapshotRowFn = std::function<void(const SnapshotRow&)>;
// Reads the snapshot-list answer from `client` (after send()), calling
// `each` for every snapshot as it is parsed. Returns the rest of the answer
// ("snapshots" an empty array; "space" with --space) when it says ok; the
// answer's error when it does not; io-error when it is malformed or the
// connection ends first. After an error the connection is not usable.
Result<Json> read_snapshot_list(ControlClient& client, const SnapshotRowFn& each);
// The same on an answer line held in memory (tests, the fuzz target).
Result<Json> parse_snapshot_list(std::string_view line, const SnapshotRowFn& each);

}  // namespace multisnap::control
