// The replication stream: what `multisnap send` writes and `multisnap
// receive` reads. docs/stream.md describes every byte; in short, a stream is
// a sequence of records, each framed and checksummed on its own:
//
//   record  = u32 type | u32 flags | u64 seq | u32 payload_len | u32 reserved
//             | payload | u64 XXH3-64(everything before, seed kRecordSeed)
//   stream  = HEADER (seq 0), then DATA and ZERO records in increasing,
//             non-overlapping offset order, then END: record count, byte
//             counts, and XXH3-64 (seed kStreamSeed) of every byte before END.
//
// A reader that meets an unknown type skips it when flag kOptional is set and
// refuses the stream otherwise, so newer writers can add optional records.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "util/status.h"
#include "util/uuid.h"

namespace multisnap::stream {

constexpr char kMagic[8] = {'M', 'S', 'N', 'A', 'P', 'S', 'T', 'R'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kRecordSeed = 0x6d736e6170726563ull;  // "msnaprec"
constexpr uint64_t kStreamSeed = 0x6d736e6170737472ull;  // "msnapstr"
constexpr size_t kRecordHeaderSize = 24;
constexpr size_t kRecordTrailerSize = 8;
// Largest DATA extent a writer emits and a reader accepts (uncompressed).
constexpr uint32_t kMaxDataLength = 8u << 20;
// Largest payload accepted (a compressed payload may exceed its data a little).
constexpr uint32_t kMaxPayload = kMaxDataLength + (1u << 20);

// Persisted record types: never renumber.
enum class RecordType : uint32_t { kHeader = 1, kData = 2, kZero = 3, kEnd = 4 };
constexpr uint32_t kOptional = 1;  // record flag: skip if the type is unknown

// DATA encodings.
enum class Encoding : uint32_t { kRaw = 0, kZstd = 1 };

struct Header {
  uint64_t volume_size = 0;
  uint32_t chunk_size = 0;      // the sender's, for information
  uint32_t flags = 0;           // kHeaderCompressed
  Uuid source_store;            // the sending store's uuid
  Uuid base;                    // nil: a full stream
  Uuid target;                  // the snapshot the stream creates
  uint64_t target_created_ns = 0;
  uint32_t base_id = 0;         // the sender's IDs, for messages only
  uint32_t target_id = 0;
  std::string target_name;      // may be empty
  bool full() const { return base.is_nil(); }
};
constexpr uint32_t kHeaderCompressed = 1;
constexpr size_t kHeaderFixedSize = 96;

struct Trailer {
  uint64_t records = 0;      // records before END, the header included
  uint64_t data_bytes = 0;   // bytes of DATA extents (uncompressed)
  uint64_t zero_bytes = 0;   // bytes of ZERO extents
  uint64_t stream_checksum = 0;
};

}  // namespace multisnap::stream
