// Clang thread-safety annotations, and a mutex that carries them.
//
// `clang++ -Wthread-safety` checks at compile time that state marked
// GUARDED_BY(mu) is only touched with mu held, and that functions marked
// REQUIRES(mu) are only called with it held. libstdc++'s std::mutex and
// std::lock_guard are not annotated, so guarded state uses Mutex, MutexLock
// and CondVar from here (thin wrappers, no cost). On GCC the macros expand to
// nothing. Build with CXX=clang++ -DCMAKE_CXX_FLAGS=-Wthread-safety to check.
//
// State that one thread owns (the engine thread's) has no mutex and no
// annotation; the header that declares it says so in a comment.
#pragma once

#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define MS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define MS_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) MS_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY MS_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) MS_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) MS_THREAD_ANNOTATION(pt_guarded_by(x))
#define REQUIRES(...) MS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) MS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) MS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) MS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) MS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS MS_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace multisnap {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope (std::lock_guard, annotated).
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// A condition variable for Mutex. wait() is called with the mutex held; it
// releases it while blocked and holds it again when it returns (spurious
// wake-ups included: callers wait in a loop on their condition).
class CondVar {
 public:
  void wait(Mutex& mu) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // still held, by the caller's MutexLock
  }
  void notify_all() { cv_.notify_all(); }
  void notify_one() { cv_.notify_one(); }

 private:
  std::condition_variable cv_;
};

}  // namespace multisnap
