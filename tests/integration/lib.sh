# Shared helpers for the integration tests. Each test script is run by ctest
# as: bash TEST.sh /path/to/multisnap. Exit 77 = skipped (with the reason
# printed), as ctest's SKIP_RETURN_CODE.
set -euo pipefail
MULTISNAP=${1:?usage: $0 /path/to/multisnap}
MULTISNAP=$(readlink -f "$MULTISNAP")
WORK=$(mktemp -d /tmp/multisnap-it-XXXXXX)
SERVE_PID=
PY=/usr/bin/python3  # Debian's python, which has python3-libnbd
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH  # nbdsh must find that python too

cleanup() {
  local rc=$?
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then kill -KILL "$SERVE_PID" 2>/dev/null || true; fi
  for m in $(grep " $WORK/" /proc/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null || true; done
  for l in $(losetup -j "$WORK/fuse/disk" 2>/dev/null | cut -d: -f1); do losetup -d "$l" 2>/dev/null || true; done
  for f in "$WORK"/fuse*; do [ -d "$f" ] && fusermount3 -u "$f" 2>/dev/null || true; done
  if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "$WORK/serve.log" ]; then
    echo "---- serve log (last 30 lines)"; tail -30 "$WORK/serve.log"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }
need() { for t in "$@"; do command -v "$t" >/dev/null || skip "$t is not installed"; done; }
ms() { "$MULTISNAP" "$@"; }
# The exception store under test: MULTISNAP_FORMAT=range (default) or bitmask.
FORMAT=${MULTISNAP_FORMAT:-range}
create_store() { "$MULTISNAP" create "$@" --format "$FORMAT"; }
export MULTISNAP_CONTROL=$WORK/ms.ctl
SOCK=$WORK/ms.sock
uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

wait_for_socket() {
  for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
  fail "no socket $1 (serve did not start)"
}

# start_serve [extra serve args...]: serves store.img on $SOCK and $MULTISNAP_CONTROL.
start_serve() {
  rm -f "$SOCK" "$MULTISNAP_CONTROL"
  "$MULTISNAP" serve store.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" "$@" >>serve.log 2>&1 &
  SERVE_PID=$!
  wait_for_socket "$SOCK"
  wait_for_socket "$MULTISNAP_CONTROL"
}

# stop_serve: SIGTERM, which must drain, commit and exit 0.
stop_serve() {
  kill -TERM "$SERVE_PID"
  local rc=0
  wait "$SERVE_PID" || rc=$?
  SERVE_PID=
  [ $rc -eq 0 ] || fail "serve exited with $rc after SIGTERM"
}

expect_fail() {  # expect_fail "text in stderr" command...
  local want=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "expected failure of: $* (output: $out)"
  echo "$out" | grep -q -- "$want" || fail "expected '$want' in the error of '$*', got: $out"
}
