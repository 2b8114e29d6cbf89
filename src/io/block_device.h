// BlockDevice: the one interface through which multisnap touches storage.
//
// Implementations: FileDevice (a regular file or a block device), MemoryDevice
// (RAM, can simulate a power cut) and FaultDevice (wraps another and injects
// errors). The engine's asynchronous I/O goes through IoContext (io_context.h),
// which uses io_uring for devices with a file descriptor and falls back to
// these synchronous calls otherwise.
//
// Semantics, for every implementation:
//  * read/write of [offset, offset+len) fail with kOutOfRange past size().
//  * A write is durable only after a later flush() returns ok. Until then a
//    crash may keep it, drop it, or keep part of it (512-byte granularity).
//  * discard() is a hint that the range is no longer needed: afterwards reads
//    return zeros or the old contents. write_zeroes() makes the range read zero.
//  * Not thread-safe unless a subclass says so. The engine does NOT serialise
//    access: origin reads and direct origin writes (clean chunks) run on the
//    callers' threads (NBD connections) while the engine thread reads and
//    writes both devices, so the origin device must take concurrent calls
//    (the store device is used by the engine thread alone).
//    FileDevice (pread/pwrite) and MemoryDevice (one mutex) do; FaultDevice
//    does when the device it wraps does.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/status.h"

namespace multisnap {

// The alignment direct writes need: buffer address, offset and length.
inline constexpr uint64_t kDirectAlign = 4096;

// How much of a write of len bytes at offset goes in its first call when
// writes are made in pieces of `piece` bytes aligned to it (a power of two;
// 0: all of it). BlockDevice::write_piece.
inline uint64_t first_piece(uint64_t offset, uint64_t len, uint32_t piece) {
  return piece == 0 ? len : std::min<uint64_t>(len, piece - offset % piece);
}

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual uint64_t size() const = 0;
  virtual Status read(uint64_t offset, void* buf, size_t len) = 0;
  // read(), and where [offset, offset+len) is not all in the page cache,
  // have the kernel read [around, around+around_len) in the same go (which
  // must contain it): one read of a whole chunk instead of one per page
  // for later reads of its other pages. Default: read().
  virtual Status read_around(uint64_t offset, void* buf, size_t len, uint64_t around, uint64_t around_len) {
    (void)around, (void)around_len;
    return read(offset, buf, len);
  }
  virtual Status write(uint64_t offset, const void* buf, size_t len) = 0;
  virtual Status flush() = 0;
  virtual Status discard(uint64_t offset, uint64_t len) = 0;
  virtual Status write_zeroes(uint64_t offset, uint64_t len);

  // A write that is durable when it returns (NBD's FUA).
  virtual Status write_fua(uint64_t offset, const void* buf, size_t len);

  // Runs of [offset, offset+len) that are allocated or holes (holes read as
  // zeros). The default says "all allocated", which is always true enough.
  struct Extent {
    uint64_t length;
    bool hole;
  };
  virtual Result<std::vector<Extent>> allocation(uint64_t offset, uint64_t len);
  // True when all of [offset, offset+len) is a hole (allocation() says so;
  // FileDevice asks with one SEEK_DATA, without looking for where the data
  // it finds ends, which on tmpfs walks the page cache).
  virtual Result<bool> is_hole(uint64_t offset, uint64_t len);

  // Makes later writes into [offset, offset+len) independent of free space
  // on the host filesystem (fallocate on a regular file): kNoSpace when the
  // filesystem cannot give it now. Devices without the notion (block
  // devices, memory) and filesystems without fallocate return ok.
  virtual Status preallocate(uint64_t offset, uint64_t len);

  // Makes the device at least `size` bytes and returns its size: a regular
  // file is extended (sparse) and the new size made durable before this
  // returns; 0 picks up the size the device has now (a block device that
  // was grown, a file extended by someone else). Never shrinks. Thread-safe
  // against concurrent reads and writes below the old size. Default:
  // kNotSupported.
  virtual Result<uint64_t> resize(uint64_t size);

  // The file descriptor for io_uring, or -1 when the device has none.
  virtual int fd() const { return -1; }
  // Buffered writes through fd() are made in pieces of at most this many
  // bytes, aligned to it (a power of two), or whole where 0 (the default).
  // The page cache of ext4 (Linux 6.16 on) sizes a folio by the write that
  // creates it, and a later small write into a large folio walks every
  // block of it: 4 KiB overwrites of a file written in 1 MiB writes ran at
  // 61,435 IOPS here, of one written in 64 KiB writes at 118,415. The
  // origin is written in 64 KiB pieces so a guest's small writes stay
  // cheap (docs/design.md 5.10). Writes with FUA stay whole: their RWF_DSYNC
  // makes only the range of its own write durable.
  virtual uint32_t write_piece() const { return 0; }
  // A second descriptor on the same file that bypasses the page cache
  // (O_DIRECT), for writes whose buffer, offset and length are multiples of
  // kDirectAlign, or -1 (none asked for, or refused). Reads and the other
  // writes stay on fd(); the kernel keeps the two coherent as long as the
  // same range is not written through both at once (docs/design.md 3).
  virtual int direct_fd() const { return -1; }
  // The file system refused a direct write after all (EINVAL): direct_fd()
  // is -1 from now on. True for the call that turned it off.
  virtual bool refuse_direct() { return false; }
  // The whole device mapped read-only (mmap, MAP_SHARED: the page cache's
  // own pages, coherent with write()), or null where it cannot be. Made at
  // the first call; stays until the device is destroyed. Any thread after
  // that first call.
  virtual const uint8_t* map_read() { return nullptr; }
  // Whether every page of [offset, offset+len) of the mapping is in memory
  // now (mincore); false without a mapping.
  virtual bool mapped_resident(uint64_t offset, uint64_t len) const {
    (void)offset, (void)len;
    return false;
  }
  // A direct write from the mapping maps the pages it reads into this
  // process's page tables, where they stay (and count in its RSS) until
  // dropped: this drops them all (the page cache keeps them). Any thread.
  virtual void drop_mapped_pages() {}
  virtual std::string describe() const = 0;

 protected:
  Status check_range(uint64_t offset, uint64_t len) const;
};

}  // namespace multisnap
