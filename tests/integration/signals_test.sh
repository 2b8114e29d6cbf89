#!/usr/bin/env bash
# serve's signal handling: SIGTERM with idle clients exits 0 at once; a
# client that stops reading its replies holds the drain for at most the drain
# timeout (5 s), after which serve still commits and exits 0; a second signal
# during the drain exits at once (status 128+15) and the store reopens at its
# last commit, clean, with everything flushed before intact.
source "$(dirname "$0")/lib.sh"
need nbdsh qemu-io
# Background clients write to files (nothing may keep ctest's pipe open) and
# are killed on the way out.
trap 'rc=$?; set +e; for p in $(jobs -p); do kill "$p" 2>/dev/null; done; (exit $rc); cleanup' EXIT

create_store origin.img store.img --origin-size 64M --chunk-size 64K >/dev/null

# A raw NBD client that negotiates, then sends READs of 1 MiB and never reads
# the replies, so the server's socket buffer fills and its drain must wait.
stuck_client() {  # writes its pid to stuck.pid; stays connected until killed
  $PY - "$SOCK" >stuck.log 2>&1 <<'PY' &
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("server closed during the handshake")
        b += c
    return b
assert recv(8) == b"NBDMAGIC" and recv(8) == b"IHAVEOPT"
recv(2)
s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
name = b"origin"
s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, len(name)) + name)  # NBD_OPT_EXPORT_NAME
recv(10)  # export size and flags
for i in range(64):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, (i % 64) << 20, 1 << 20))  # READ
open("stuck.ready", "w").close()
time.sleep(120)
PY

  echo $! > stuck.pid
  for _ in $(seq 100); do [ -e stuck.ready ] && return 0; sleep 0.05; done
  fail "the stuck client did not start"
}

RC=
wait_exit() {  # wait_exit SECONDS: sets RC to serve's exit status; fails if it does not exit in time
  local deadline=$((SECONDS + $1))
  while kill -0 "$SERVE_PID" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "serve did not exit within $1 s"
    sleep 0.05
  done
  RC=0
  wait "$SERVE_PID" || RC=$?
  SERVE_PID=
}

# 1. SIGTERM with an idle connected client: exits 0 promptly.
start_serve
nbdsh -u "$(uri origin)" -c 'import time; time.sleep(30)' >idle.log 2>&1 &
idle=$!
sleep 0.5
kill -TERM "$SERVE_PID"
wait_exit 3
[ "$RC" = 0 ] || fail "serve did not exit 0 with an idle client"
kill "$idle" 2>/dev/null || true; wait "$idle" 2>/dev/null || true

# 2. A client that never reads its replies: the drain gives up after its
#    timeout, the store is committed, exit 0.
start_serve
qemu-io -f raw -c 'write -P 0x11 0 1M' -c flush "$(uri origin)" >/dev/null
stuck_client
t0=$SECONDS
kill -TERM "$SERVE_PID"
sleep 1
kill -0 "$SERVE_PID" 2>/dev/null || fail "serve did not wait for the replies in flight"
wait_exit 15
[ "$RC" = 0 ] || fail "serve did not exit 0 after the drain timeout"
[ $((SECONDS - t0)) -ge 3 ] || fail "serve gave up on the stuck client before its drain timeout"
kill "$(cat stuck.pid)" 2>/dev/null || true; rm -f stuck.ready
ms check store.img | grep -q clean || fail "check after a timed-out drain"

# 3. A second signal during the drain exits at once; the store reopens at its
#    last commit with the flushed data intact.
start_serve
ms snapshot create --name before >/dev/null
qemu-io -f raw -c 'write -P 0x22 0 1M' -c flush "$(uri origin)" >/dev/null
stuck_client
kill -TERM "$SERVE_PID"
sleep 0.5
kill -0 "$SERVE_PID" 2>/dev/null || fail "serve did not wait for the replies in flight"
kill -TERM "$SERVE_PID"
wait_exit 2
[ "$RC" = $((128 + 15)) ] || fail "a second SIGTERM did not exit at once with status 143"
grep -q "again: exiting at once" serve.log || fail "no message for the second signal"
kill "$(cat stuck.pid)" 2>/dev/null || true
ms check store.img | grep -q clean || fail "check after a second signal"
start_serve
qemu-io -f raw -c 'read -P 0x22 0 1M' "$(uri origin)" | grep -q "read 1048576" || fail "origin lost flushed data"
qemu-io -f raw -c 'read -P 0x11 0 1M' "$(uri snapshot/before)" | grep -q "read 1048576" || fail "snapshot lost its data"
stop_serve
echo "signals: ok"
