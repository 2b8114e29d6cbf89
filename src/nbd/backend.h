// What the NBD server serves: a Backend names exports and opens them; an
// Export performs I/O asynchronously. The daemon plugs the engine in here;
// tests plug in MemoryBackend (memory_backend.h).
//
// Threading: every method may be called from any connection thread, at the
// same time as others. Completion callbacks may run on any thread (the
// engine's), possibly before the submitting call returns; they must not
// block for long.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace multisnap::nbd {

struct ExportInfo {
  std::string name;         // as the client asked for it (canonical form for OPT_LIST)
  std::string description;  // NBD_INFO_DESCRIPTION and OPT_LIST text
  uint64_t size = 0;
  bool read_only = false;
  bool can_multi_conn = false;  // only where it is true: a flush on one connection covers all
  bool can_trim = true;
  bool can_write_zeroes = true;
  bool can_fast_zero = true;
  bool can_cache = true;
  uint32_t min_block = 1;
  uint32_t preferred_block = 4096;
  uint32_t max_block = 32u << 20;  // largest READ/WRITE payload accepted
};

// One run of bytes with the same allocation state (NBD base:allocation).
struct Extent {
  uint32_t length = 0;
  bool hole = false;  // NBD_STATE_HOLE: not allocated in this export
  bool zero = false;  // NBD_STATE_ZERO: reads as zeros
};

// One run of bytes with the same state in a metadata context other than
// base:allocation; `flags` goes to the client as it is, its meaning is the
// context's.
struct ContextExtent {
  uint32_t length = 0;
  uint32_t flags = 0;
};

using Done = std::function<void(Status)>;
using ExtentsDone = std::function<void(Result<std::vector<Extent>>)>;
using ContextExtentsDone = std::function<void(Result<std::vector<ContextExtent>>)>;

// A metadata context of an open export, other than base:allocation (which
// the server answers with Export::block_status). Obtained from
// Export::open_meta_context; destroyed before its Export. Same threading
// rules as Export.
class MetaContext {
 public:
  virtual ~MetaContext() = default;
  // As Export::block_status: extents starting at offset and covering at
  // least the first byte; they may stop before offset+length and must not
  // pass the end of the export. The server merges neighbours with equal
  // flags and clips what passes the request.
  virtual void block_status(uint64_t offset, uint64_t length, ContextExtentsDone done) = 0;
};

class Export {
 public:
  virtual ~Export() = default;
  virtual const ExportInfo& info() const = 0;

  // Ranges are validated by the server before these are called
  // (in bounds, non-zero length, within max_block for read/write).
  virtual void read(uint64_t offset, uint32_t length, uint8_t* buf, Done done) = 0;
  virtual void write(uint64_t offset, uint32_t length, const uint8_t* buf, bool fua, Done done) = 0;
  // Everything completed before the flush was issued is durable when it completes.
  virtual void flush(Done done) = 0;
  virtual void trim(uint64_t offset, uint64_t length, bool fua, Done done) = 0;
  // no_hole: the client wants the range allocated, not punched.
  // fast_zero: fail with kNotSupported rather than zero slowly.
  virtual void write_zeroes(uint64_t offset, uint64_t length, bool fua, bool no_hole,
                            bool fast_zero, Done done) = 0;
  virtual void cache(uint64_t offset, uint64_t length, Done done) = 0;
  // Extents starting at offset and covering at least the first byte; they
  // may stop before offset+length and must not pass the end of the export.
  virtual void block_status(uint64_t offset, uint64_t length, ExtentsDone done) = 0;

  // A context the Backend's meta_contexts(kSet) selected for this export's
  // name, `name` exactly as it returned it. Called on the connection thread
  // when the client enters transmission (GO, EXPORT_NAME), once per selected
  // context. An error fails the GO (drops an EXPORT_NAME client), so a
  // context that has lost its meaning since it was selected should rather
  // open and fail its requests.
  virtual Result<std::unique_ptr<MetaContext>> open_meta_context(std::string_view name) {
    return make_error(Code::kNotSupported, "no meta context '{}'", name);
  }
};

// What a meta context query is for.
enum class MetaQuery {
  kList,  // NBD_OPT_LIST_META_CONTEXT: may also name families ("ns:leaf-prefix:")
  kSet,   // NBD_OPT_SET_META_CONTEXT: only contexts open_meta_context can open
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Every export, with its canonical name, for NBD_OPT_LIST.
  virtual Result<std::vector<ExportInfo>> list_exports() = 0;
  // Information about one export without opening it (NBD_OPT_INFO).
  // kNotFound when there is no such export.
  virtual Result<ExportInfo> export_info(std::string_view name) = 0;
  // Opens an export for a connection (NBD_OPT_GO, NBD_OPT_EXPORT_NAME).
  // The export stays valid until the returned object is destroyed.
  virtual Result<std::unique_ptr<Export>> open_export(std::string_view name) = 0;

  // Metadata contexts besides base:allocation (which the server offers on
  // every export itself): the names `query` matches on export `name`, which
  // the server has checked exists. `query` is one client query: it starts
  // with a namespace and a colon, and is never in the "base:" namespace; for
  // kList an empty query means "every context, or enough names to find them".
  // Unknown namespaces and queries that match nothing give an empty list, not
  // an error (the protocol says to ignore them). For kSet a context's name
  // must be the query exactly as the client sent it: the reply must name
  // it as asked. Errors fail the option (mapped as for export_info).
  virtual Result<std::vector<std::string>> meta_contexts(std::string_view /*name*/,
                                                         std::string_view /*query*/,
                                                         MetaQuery /*kind*/) {
    return std::vector<std::string>{};
  }
};

}  // namespace multisnap::nbd
