#include "io/file_device.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>

namespace multisnap {

namespace {
// The file behind fd opened again (the same inode even if the path was
// renamed since): a descriptor with its own open file description.
int reopen(int fd, int flags) { return ::open(fmt::format("/proc/self/fd/{}", fd).c_str(), flags | O_CLOEXEC); }

// A second open of the file behind fd (the same inode even if the path was
// renamed since) with O_DIRECT, or -1 where that is refused or the file
// system needs more alignment than kDirectAlign (statx STATX_DIOALIGN, when
// the kernel reports it; otherwise a refusal shows at the first write), and
// on tmpfs.
int open_direct(int fd) {
  // tmpfs takes O_DIRECT since Linux 6.6 but keeps the pages cached: no
  // gain, and status would claim copies bypass a cache they do not.
  struct statfs fs {};
  if (fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) return -1;
#ifdef STATX_DIOALIGN
  struct statx stx {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) != 0 &&
      (stx.stx_dio_offset_align == 0 || stx.stx_dio_offset_align > kDirectAlign ||
       stx.stx_dio_mem_align > kDirectAlign))
    return -1;
#endif
  return reopen(fd, O_RDWR | O_DIRECT);
}
}  // namespace

Result<std::unique_ptr<FileDevice>> FileDevice::open(const std::string& path,
                                                     const FileDeviceOptions& options) {
  if (options.write_piece != 0 && (options.write_piece < 4096 || !std::has_single_bit(options.write_piece)))
    return make_error(Code::kInvalidArgument, "{}: write pieces of {} bytes (a power of two, at least 4096)", path,
                      options.write_piece);
  int flags = O_CLOEXEC | (options.read_only ? O_RDONLY : O_RDWR);
  if (options.create) flags |= O_CREAT;
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) return errno_status(errno, fmt::format("cannot open {}", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return errno_status(err, fmt::format("cannot stat {}", path));
  }
  uint64_t size = 0;
  bool block_device = S_ISBLK(st.st_mode);
  if (block_device) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      int err = errno;
      ::close(fd);
      return errno_status(err, fmt::format("cannot get the size of {}", path));
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
    if (options.create && size == 0 && options.create_size > 0) {
      if (ftruncate(fd, static_cast<off_t>(options.create_size)) != 0) {
        int err = errno;
        ::close(fd);
        return errno_status(err, fmt::format("cannot size {}", path));
      }
      size = options.create_size;
    }
  } else {
    ::close(fd);
    return make_error(Code::kInvalidArgument, "{} is neither a regular file nor a block device",
                      path);
  }
  auto dev = std::unique_ptr<FileDevice>(new FileDevice(fd, path, size, block_device, options.read_only));
  if (options.direct_writes && !options.read_only) dev->direct_fd_ = open_direct(fd);
  dev->write_piece_ = options.write_piece;
  return dev;
}

FileDevice::FileDevice(int fd, std::string path, uint64_t size, bool block_device, bool read_only)
    : fd_(fd), path_(std::move(path)), size_(size), block_device_(block_device),
      read_only_(read_only) {}

FileDevice::~FileDevice() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_len_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

const uint8_t* FileDevice::map_read() {
  if (map_tried_) return map_;
  map_tried_ = true;
  const uint64_t len = size();
  if (len == 0 || len > (uint64_t{1} << 46) || static_cast<size_t>(len) != len) return nullptr;
  void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return nullptr;
  map_ = static_cast<const uint8_t*>(p);
  map_len_ = len;
  return map_;
}

bool FileDevice::mapped_resident(uint64_t offset, uint64_t len) const {
  static const uint64_t kPageSize = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (!map_ || offset % kPageSize != 0 || offset > map_len_ || len > map_len_ - offset) return false;
  unsigned char vec[256];
  const uint64_t pages = (len + kPageSize - 1) / kPageSize;
  for (uint64_t done = 0; done < pages;) {
    const uint64_t n = std::min<uint64_t>(pages - done, sizeof vec);
    if (::mincore(const_cast<uint8_t*>(map_) + offset + done * kPageSize, n * kPageSize, vec) != 0) return false;
    for (uint64_t i = 0; i < n; ++i)
      if (!(vec[i] & 1)) return false;
    done += n;
  }
  return true;
}

Result<bool> FileDevice::try_lock(bool exclusive) {
  if (lock_fd_ < 0) {
    lock_fd_ = reopen(fd_, O_RDONLY);
    if (lock_fd_ < 0) lock_fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);  // no /proc
    if (lock_fd_ < 0) return errno_status(errno, "cannot open " + path_ + " to lock it");
  }
  if (::flock(lock_fd_, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0) return true;
  if (errno == EWOULDBLOCK) return false;
  return errno_status(errno, "cannot lock " + path_);
}

void FileDevice::drop_mapped_pages() {
  if (map_) (void)::madvise(const_cast<uint8_t*>(map_), map_len_, MADV_DONTNEED);
}

Status FileDevice::rw_check(uint64_t offset, size_t len, bool writing) const {
  if (writing && read_only_) return make_error(Code::kReadOnly, "{} is open read-only", path_);
  return check_range(offset, len);
}

Status FileDevice::read(uint64_t offset, void* buf, size_t len) {
  MS_TRY(rw_check(offset, len, false));
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::pread(fd_, p, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, fmt::format("read {} at {}", path_, offset));
    }
    if (n == 0) return make_error(Code::kIoError, "read {} at {}: unexpected end of file", path_, offset);
    p += n;
    offset += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return Status::ok();
}

Status FileDevice::read_around(uint64_t offset, void* buf, size_t len, uint64_t around, uint64_t around_len) {
  MS_TRY(rw_check(offset, len, false));
  // What the page cache has, without waiting for the device.
  iovec iov{buf, len};
  ssize_t n = ::preadv2(fd_, &iov, 1, static_cast<off_t>(offset), RWF_NOWAIT);
  if (n == static_cast<ssize_t>(len)) return Status::ok();
  size_t got = n > 0 ? static_cast<size_t>(n) : 0;
  // The rest is on the device: ask for the whole range around it (one
  // request; posix_fadvise starts it and returns), then wait for our part.
  if (around <= offset && offset + len <= around + around_len)
    (void)posix_fadvise(fd_, static_cast<off_t>(around), static_cast<off_t>(around_len), POSIX_FADV_WILLNEED);
  return read(offset + got, static_cast<char*>(buf) + got, len - got);
}

// piece: at most this many bytes per call, aligned to it (0: all at once).
static Status pwrite_all(int fd, const std::string& path, uint64_t offset, const void* buf,
                         size_t len, int rwf, uint32_t piece = 0) {
  auto* p = static_cast<const char*>(buf);
  while (len > 0) {
    iovec iov{const_cast<char*>(p), static_cast<size_t>(first_piece(offset, len, piece))};
    ssize_t n = ::pwritev2(fd, &iov, 1, static_cast<off_t>(offset), rwf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, fmt::format("write {} at {}", path, offset));
    }
    p += n;
    offset += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return Status::ok();
}

Status FileDevice::write(uint64_t offset, const void* buf, size_t len) {
  MS_TRY(rw_check(offset, len, true));
  return pwrite_all(fd_, path_, offset, buf, len, 0, write_piece_);
}

Status FileDevice::write_fua(uint64_t offset, const void* buf, size_t len) {
  MS_TRY(rw_check(offset, len, true));
  return pwrite_all(fd_, path_, offset, buf, len, RWF_DSYNC);
}

Status FileDevice::flush() {
  if (read_only_) return Status::ok();
  if (fdatasync(fd_) != 0) return errno_status(errno, fmt::format("flush {}", path_));
  return Status::ok();
}

Status FileDevice::preallocate(uint64_t offset, uint64_t len) {
  if (block_device_ || read_only_ || len == 0) return Status::ok();
  MS_TRY(rw_check(offset, len, true));
  // Mode 0 inside the file's size: allocates the holes, leaves data alone.
  if (fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(len)) == 0) return Status::ok();
  int err = errno;
  if (err == EOPNOTSUPP || err == ENOSYS) return Status::ok();  // nothing to promise on such a filesystem
  if (err == ENOSPC || err == EDQUOT)
    return make_error(Code::kNoSpace, "the filesystem holding {} is full (fallocate of {} bytes at {})", path_,
                      len, offset);
  return errno_status(err, fmt::format("fallocate {} at {}", path_, offset));
}

Status FileDevice::discard(uint64_t offset, uint64_t len) {
  MS_TRY(rw_check(offset, len, true));
  if (len == 0) return Status::ok();
  if (block_device_) {
    uint64_t range[2] = {offset, len};
    if (ioctl(fd_, BLKDISCARD, range) != 0 && errno != EOPNOTSUPP)
      return errno_status(errno, fmt::format("discard {} at {}", path_, offset));
    return Status::ok();
  }
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(len)) != 0) {
    if (errno == EOPNOTSUPP) return Status::ok();  // a hint only
    return errno_status(errno, fmt::format("discard {} at {}", path_, offset));
  }
  return Status::ok();
}

Result<std::vector<BlockDevice::Extent>> FileDevice::allocation(uint64_t offset, uint64_t len) {
  MS_TRY(check_range(offset, len));
  std::vector<Extent> out;
  if (block_device_) return std::vector<Extent>{{len, false}};
  const uint64_t end = offset + len;
  uint64_t pos = offset;
  while (pos < end) {
    off_t data = lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) {  // no data from here to EOF
        out.push_back({end - pos, true});
        break;
      }
      return std::vector<Extent>{{len, false}};  // SEEK_DATA unsupported: say allocated
    }
    uint64_t d = std::min<uint64_t>(static_cast<uint64_t>(data), end);
    if (d > pos) out.push_back({d - pos, true});
    if (d >= end) break;
    off_t hole = lseek(fd_, static_cast<off_t>(d), SEEK_HOLE);
    uint64_t h = hole < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    out.push_back({h - d, false});
    pos = h;
  }
  return out;
}

Result<bool> FileDevice::is_hole(uint64_t offset, uint64_t len) {
  MS_TRY(check_range(offset, len));
  if (block_device_ || len == 0) return false;
  off_t data = lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
  if (data < 0) return errno == ENXIO;  // ENXIO: no data from here to EOF; else SEEK_DATA unsupported
  return static_cast<uint64_t>(data) >= offset + len;
}

Status FileDevice::write_zeroes(uint64_t offset, uint64_t len) {
  MS_TRY(rw_check(offset, len, true));
  if (len == 0) return Status::ok();
  if (block_device_) {
    uint64_t range[2] = {offset, len};
    if (ioctl(fd_, BLKZEROOUT, range) == 0) return Status::ok();
  } else if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                       static_cast<off_t>(len)) == 0) {
    return Status::ok();
  }
  if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOTTY)
    return errno_status(errno, fmt::format("write zeroes to {} at {}", path_, offset));
  return BlockDevice::write_zeroes(offset, len);
}

Result<uint64_t> FileDevice::resize(uint64_t want) {
  uint64_t now = 0;
  if (block_device_) {
    if (ioctl(fd_, BLKGETSIZE64, &now) != 0) return errno_status(errno, fmt::format("cannot get the size of {}", path_));
    if (want > now)
      return make_error(Code::kInvalidArgument, "{} is a block device of {} bytes: grow it first (lvextend, ...)",
                        path_, now);
  } else {
    struct stat st;
    if (fstat(fd_, &st) != 0) return errno_status(errno, fmt::format("cannot stat {}", path_));
    now = static_cast<uint64_t>(st.st_size);
    if (want > now) {
      if (read_only_) return make_error(Code::kReadOnly, "{} is open read-only", path_);
      if (ftruncate(fd_, static_cast<off_t>(want)) != 0)
        return errno_status(errno, fmt::format("cannot extend {} to {} bytes", path_, want));
      now = want;
    }
    // The new size is durable before anything may point past the old end.
    if (!read_only_ && fsync(fd_) != 0) return errno_status(errno, fmt::format("cannot sync {}", path_));
  }
  uint64_t old = size_.load(std::memory_order_acquire);
  if (now > old) size_.store(now, std::memory_order_release);
  return std::max(now, old);
}

}  // namespace multisnap
