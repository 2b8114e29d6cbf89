// FileDevice: a regular file or a block device, through pread/pwrite.
// Thread-safe for concurrent I/O (the kernel orders nothing between them).
#pragma once

#include <atomic>

#include <string>

#include "io/block_device.h"

namespace multisnap {

struct FileDeviceOptions {
  bool read_only = false;
  bool create = false;        // create the file if missing (regular files only)
  uint64_t create_size = 0;   // with create: truncate a new or empty file to this size
  // Also open a descriptor that bypasses the page cache (direct_fd), unless
  // the file system refuses O_DIRECT or needs more than kDirectAlign.
  bool direct_writes = false;
  // Buffered writes (not write_fua) in pieces of at most this many bytes,
  // aligned to it (a power of two; 0: whole). See BlockDevice::write_piece.
  uint32_t write_piece = 0;
};

class FileDevice final : public BlockDevice {
 public:
  static Result<std::unique_ptr<FileDevice>> open(const std::string& path,
                                                  const FileDeviceOptions& options = {});
  ~FileDevice() override;

  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  Status read(uint64_t offset, void* buf, size_t len) override;
  Status read_around(uint64_t offset, void* buf, size_t len, uint64_t around, uint64_t around_len) override;
  Status write(uint64_t offset, const void* buf, size_t len) override;
  Status write_fua(uint64_t offset, const void* buf, size_t len) override;
  Status flush() override;
  Status discard(uint64_t offset, uint64_t len) override;
  Status preallocate(uint64_t offset, uint64_t len) override;
  Status write_zeroes(uint64_t offset, uint64_t len) override;
  Result<std::vector<Extent>> allocation(uint64_t offset, uint64_t len) override;
  Result<bool> is_hole(uint64_t offset, uint64_t len) override;
  Result<uint64_t> resize(uint64_t size) override;
  int fd() const override { return fd_; }
  uint32_t write_piece() const override { return write_piece_; }
  int direct_fd() const override { return direct_refused_.load(std::memory_order_relaxed) ? -1 : direct_fd_; }
  bool refuse_direct() override { return !direct_refused_.exchange(true, std::memory_order_relaxed); }
  std::string describe() const override { return path_; }
  const uint8_t* map_read() override;
  bool mapped_resident(uint64_t offset, uint64_t len) const override;
  void drop_mapped_pages() override;

  const std::string& path() const { return path_; }
  // flock(LOCK_NB) of the file, shared or exclusive, held until the device
  // is destroyed: true when taken, false when another process holds it. It
  // is taken on a descriptor of its own (the file opened again), never
  // given to io_uring or mmap: io_uring lets go of the files of a killed
  // process only after the process is gone, so a lock on fd() could
  // outlive a kill -9 by a moment and refuse the next serve or check.
  Result<bool> try_lock(bool exclusive);

 private:
  FileDevice(int fd, std::string path, uint64_t size, bool block_device, bool read_only);
  Status rw_check(uint64_t offset, size_t len, bool writing) const;

  int fd_;
  int direct_fd_ = -1;
  int lock_fd_ = -1;
  std::atomic<bool> direct_refused_{false};
  uint32_t write_piece_ = 0;
  std::string path_;
  std::atomic<uint64_t> size_;  // grows (resize) while other threads read and write
  bool block_device_;
  bool read_only_;
  const uint8_t* map_ = nullptr;
  uint64_t map_len_ = 0;
  bool map_tried_ = false;
};

}  // namespace multisnap
