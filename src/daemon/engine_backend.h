// EngineBackend: serves the engine's volumes as NBD exports.
//
// Export names: "" and "origin" are the origin; "snapshot/<id>" and
// "snapshot/<name>" a snapshot. The canonical name of an open export is
// "origin" or "snapshot/<id>". OPT_LIST shows the canonical names, with the
// snapshot's name and time in the description.
//
// Meta contexts: every export offers "multisnap:changed:<BASE>" (BASE a
// snapshot ID or name): flag 1 on the chunks where the export differs from
// BASE, 0 elsewhere, from the store's metadata (Engine::changed_chunks).
// LIST shows the family "multisnap:changed:"; SET of a BASE that does not
// exist selects nothing. docs/nbd.md has the details.
//
// Thread-safe (the engine is).
#pragma once

#include <mutex>
#include <map>
#include <set>

#include "daemon/metrics.h"
#include "engine/engine.h"
#include "nbd/backend.h"

namespace multisnap {

class EngineBackend final : public nbd::Backend {
 public:
  // `metrics`: where to count and time requests (null: nowhere); it must
  // outlive every export opened.
  EngineBackend(Engine& engine, bool read_only_snapshots, RequestMetrics* metrics = nullptr)
      : engine_(engine), read_only_snapshots_(read_only_snapshots), metrics_(metrics) {}

  Result<std::vector<nbd::ExportInfo>> list_exports() override;
  Result<nbd::ExportInfo> export_info(std::string_view name) override;
  Result<std::unique_ptr<nbd::Export>> open_export(std::string_view name) override;
  Result<std::vector<std::string>> meta_contexts(std::string_view name, std::string_view query,
                                                 nbd::MetaQuery kind) override;

  // While a snapshot is being deleted, new opens of it are refused.
  void block_snapshot(SnapshotId id);
  void unblock_snapshot(SnapshotId id);

  static std::string describe(const SnapshotInfo& s);

  // NBD_OPT_LIST names the origin and at most this many snapshots (the
  // first in ID order): the answer is built in memory for any client.
  static constexpr size_t kListLimit = 10000;
  void set_list_limit(size_t n) { list_limit_ = n; }

 private:
  nbd::ExportInfo info_for(const Volume& v, const std::string& description) const;
  // What every export shares (size, block sizes, flags).
  nbd::ExportInfo template_info() const;
  Result<VolumeRef> open(std::string_view name);

  Engine& engine_;
  bool read_only_snapshots_;
  RequestMetrics* metrics_;
  size_t list_limit_ = kListLimit;
  std::mutex mu_;
  std::map<SnapshotId, int> blocked_;  // how many deletes block it
};

}  // namespace multisnap
