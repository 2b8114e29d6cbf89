#!/usr/bin/env bash
# Runs every test: installs what is missing, builds Debug with ASan/UBSan and
# Release, runs the whole ctest suite on both (about 5-10 minutes on 2 cores),
# then a ThreadSanitizer build (build-tsan) of the threaded parts only: the
# threaded engine stress test (engine thread + 4 client threads, creates,
# deletes, rollback; io_uring and synchronous I/O), the NBD server tests, the
# control socket tests, and three integration tests against a real daemon
# (range: clients, replication, grow); about 5 minutes on 2 cores from scratch, 2-3
# of them the build. Then 10 s of libFuzzer per target when clang is there
# (MULTISNAP_FUZZ_SECONDS=n for more). The aim: all of it, builds included,
# in under 20 minutes on CI's 2 cores.
#
# The ASan/UBSan build (5-10x slower) runs the randomized tests smaller: the
# model test a fifth of the steps per seed (tiny-pool cases: a third of the
# seeds), the crash replay each
# prefix cut once instead of twice (tests/support/sanitizer.h). It is there
# for memory and undefined-behaviour errors on every path; the Release pass
# runs the full randomized depth.
#   ./test.sh             all of that
#   ./test.sh --quick     Release only
# Longer runs: MULTISNAP_SOAK=20 ./test.sh (randomized tests 20x longer).
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh
jobs=$(nproc)
# Every build is a unity build (CMAKE_UNITY_BUILD: up to 8 of a target's
# sources compiled as one file). Most of the compile time is code generation
# for the templates the files share (gtest, nlohmann::json, fmt, the standard
# library), done once per batch instead of once per file: the ASan build's
# summed compile time went from 2358 s to 1043 s here. Files whose
# file-local helpers clash are marked SKIP_UNITY_BUILD_INCLUSION.
unity=-DCMAKE_UNITY_BUILD=ON
run() {  # build-dir ctest-exclude-regex cmake-args...
  local dir=$1 exclude=$2 start=$SECONDS; shift 2
  cmake -S . -B "$dir" -G Ninja -DMULTISNAP_WERROR=ON $unity "$@" >/dev/null
  ninja -C "$dir"
  local built=$SECONDS
  (cd "$dir" && ctest -j"$jobs" --output-on-failure --timeout 900 ${exclude:+-E "$exclude"})
  echo "$dir: build $((built - start)) s, tests $((SECONDS - built)) s"
}
# Under ASan the integration tests whose time goes to waiting (policy
# schedules), to data volume (the README tour, fio, the filesystem), to
# network setup (netns, the handshake flood) or to scraping (metrics) run in
# the Release pass only, and so does packaging the .deb (of a sanitized
# binary it would mean nothing). The per-format integration tests run for
# the range store only: the daemon, NBD and control code they drive is the
# same for both stores, and both stores' code runs under ASan in the unit,
# model and crash-replay tests (this saves about 55 s of the 20 minutes).
asan_skip='^(integration\.(bitmask\..*|range\.(policy|policy_full|fio|filesystem)|tour|netns|handshake_flood|metrics)|packaging\.deb)$'
# -O1 -g1, as AddressSanitizer's documentation suggests: line tables for
# its reports, and the tests run about 45% faster than at -O0 (crash replay
# and the model test: 94 s -> 53 s here) for about 30% more compile time.
# Built with clang where it is there (scripts/deps.sh installs it): the
# same build took 278 s against GCC's 377 s here, and its tests 102 s
# against 125 s. The Release build stays GCC, so both compilers' warnings
# fail the build (-Werror).
sanitizer_cxx=$(command -v clang++ || command -v g++ || echo c++)
forget_other_compiler() {  # build-dir: removed when made with another compiler (CMake cannot switch one)
  if [ -f "$1/CMakeCache.txt" ] && ! grep -q "^CMAKE_CXX_COMPILER:.*=$sanitizer_cxx\$" "$1/CMakeCache.txt"; then
    rm -rf "$1"
  fi
}
if [ "${1:-}" != "--quick" ]; then
  echo "== Debug + AddressSanitizer/UndefinedBehaviorSanitizer (-O1 -g1, $(basename "$sanitizer_cxx"))"
  forget_other_compiler build-asan
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run build-asan "$asan_skip" -DCMAKE_CXX_COMPILER="$sanitizer_cxx" -DCMAKE_BUILD_TYPE=Debug \
    "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" -DMULTISNAP_SANITIZE=ON -DMULTISNAP_BENCH=OFF
fi
echo "== Release"
run build-release "" -DCMAKE_BUILD_TYPE=Release
if [ "${1:-}" != "--quick" ]; then
  echo "== ThreadSanitizer: threaded engine stress test, NBD server, control socket, 3 integration tests"
  tsan_start=$SECONDS
  # clang too (sanitizer_cxx, above): 70 s to build here against GCC's 101 s, and its
  # ThreadSanitizer found a completion thread touching a Transmission after
  # the connection thread could destroy it, which GCC's never reported.
  forget_other_compiler build-tsan
  cmake -S . -B build-tsan -G Ninja -DMULTISNAP_WERROR=ON -DCMAKE_CXX_COMPILER="$sanitizer_cxx" -DCMAKE_BUILD_TYPE=Debug \
    -DMULTISNAP_SANITIZE_THREAD=ON -DMULTISNAP_BENCH=OFF -DMULTISNAP_NBD=ON $unity >/dev/null
  ninja -C build-tsan threaded_stress_test nbd_test control_test multisnap
  echo "build-tsan: build $((SECONDS - tsan_start)) s"
  # A report fails the test (exit 66), in the daemons the integration tests start too.
  # No suppressions: io_uring's shared rings gave no false positives.
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
  # The control tests mostly wait (timeouts, idle clients): they run beside
  # the others. Each binary's output is shown whole when it fails.
  build-tsan/tests/control_test --gtest_brief=1 >build-tsan/control_test.log 2>&1 &
  control_pid=$!
  build-tsan/tests/threaded_stress_test
  build-tsan/tests/nbd/nbd_test --gtest_brief=1
  (cd build-tsan && ctest -j2 --output-on-failure --timeout 900 -R '^integration\.range\.(clients|replication|grow)$')
  wait $control_pid || { cat build-tsan/control_test.log; echo "control_test failed under ThreadSanitizer"; exit 1; }
  tail -2 build-tsan/control_test.log
  unset TSAN_OPTIONS
  echo "ThreadSanitizer pass: $((SECONDS - tsan_start)) s"
fi
if [ "${1:-}" != "--quick" ] && command -v clang++ >/dev/null; then
  echo "== libFuzzer: NBD handshake and requests, control requests, replication streams, damaged metadata (${MULTISNAP_FUZZ_SECONDS:-10} s each)"
  fuzz_start=$SECONDS
  CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMULTISNAP_FUZZ=ON \
    -DMULTISNAP_TESTS=OFF -DMULTISNAP_BENCH=OFF $unity >/dev/null
  ninja -C build-fuzz nbd_fuzz control_fuzz stream_fuzz store_fuzz
  echo "build-fuzz: build $((SECONDS - fuzz_start)) s"
  [ -d build-fuzz/corpus ] || /usr/bin/python3 tests/nbd/make_fuzz_corpus.py build-fuzz/corpus
  # New inputs go to build-fuzz/corpus-<target>; the committed seeds stay as
  # they are. Two targets at a time (one process each, two cores); each
  # one's output is shown after it.
  fuzz() {  # target extra-args...: runs it, its last lines to build-fuzz/<target>.log
    local t=$1; shift
    build-fuzz/tests/fuzz/${t}_fuzz -max_total_time="${MULTISNAP_FUZZ_SECONDS:-10}" -print_final_stats=1 "$@" \
      >build-fuzz/$t.log 2>&1 || { tail -40 build-fuzz/$t.log; echo "${t}_fuzz failed"; return 1; }
  }
  both() { local rc=0; wait "$1" || rc=1; wait "$2" || rc=1; return $rc; }  # both pids, then fail if either did
  mkdir -p build-fuzz/corpus-control build-fuzz/corpus-stream build-fuzz/corpus-store
  fuzz nbd build-fuzz/corpus & a=$!
  fuzz control -max_len=8192 build-fuzz/corpus-control tests/fuzz/corpus/control & b=$!
  both $a $b
  fuzz stream build-fuzz/corpus-stream tests/fuzz/corpus/stream & a=$!
  fuzz store build-fuzz/corpus-store tests/fuzz/corpus/store & b=$!
  both $a $b
  for t in nbd control stream store; do echo "-- ${t}_fuzz"; tail -3 build-fuzz/$t.log; done
  echo "libFuzzer pass: $((SECONDS - fuzz_start)) s"
fi
echo "all tests passed in $SECONDS s"
