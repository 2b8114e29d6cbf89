#!/usr/bin/env bash
# run.sh (with MULTISNAP_BIN: no build): the banner comes only once serve
# answers, PORT= picks the TCP port, a taken port fails with a sentence that
# says what to do, and ORIGIN_SIZE with an existing store says it is ignored.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
need nbdinfo python3
RUN=$HERE/../../run.sh
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT1=$(free_port)

start_run() {  # start_run LOG [env...]: run.sh in the background, its pid in RUN_PID
  local log=$1; shift
  # A background job of this script would ignore SIGINT (and so could not
  # trap it); reset it to the default, as in a terminal, so that kill -INT
  # is what Ctrl-C does.
  env "$@" MULTISNAP_BIN="$MULTISNAP" python3 -c \
    'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp("bash", ["bash"] + sys.argv[1:])' \
    "$RUN" >"$log" 2>&1 &
  RUN_PID=$!
}
stop_run() {
  kill -INT "$RUN_PID"  # what Ctrl-C does to the script
  local rc=0
  wait "$RUN_PID" || rc=$?
  [ $rc = 0 ] || { cat "$1"; fail "run.sh exited $rc after SIGINT"; }
}
wait_banner() {
  for _ in $(seq 300); do
    if grep -q "multisnap is serving" "$1"; then
      # The moment the banner is there, what it tells to run works.
      ms status --control "$WORK/multisnap.ctl" >/dev/null || fail "banner printed before serve answers"
      return 0
    fi
    kill -0 "$RUN_PID" 2>/dev/null || { cat "$1"; fail "run.sh exited before its banner"; }
    sleep 0.1
  done
  cat "$1"; fail "no banner"
}

start_run first.log PORT="$PORT1" ORIGIN_SIZE=64M
wait_banner first.log
grep -q "nbd://127.0.0.1:$PORT1/origin" first.log || fail "the banner does not show PORT"
nbdinfo --size "nbd://127.0.0.1:$PORT1/origin" | grep -qx 67108864 || fail "not serving on PORT $PORT1"

# A second run.sh on the same port (another directory): fails, says PORT=.
mkdir other && cd other
rc=0; env PORT="$PORT1" ORIGIN_SIZE=8M MULTISNAP_BIN="$MULTISNAP" timeout 60 bash "$RUN" >taken.log 2>&1 || rc=$?
[ $rc = 1 ] || { cat taken.log; fail "run.sh on a taken port exited $rc"; }
grep -q "PORT=" taken.log || { cat taken.log; fail "no hint about PORT on a taken port"; }
grep -q "multisnap is serving" taken.log && fail "banner printed although serve failed"
cd "$WORK"
stop_run first.log

# An existing store with another ORIGIN_SIZE: said, and the old size served.
start_run second.log PORT="$PORT1" ORIGIN_SIZE=1G
wait_banner second.log
grep -q "ORIGIN_SIZE=1G is ignored" second.log || { cat second.log; fail "ORIGIN_SIZE with an existing store not mentioned"; }
nbdinfo --size "nbd://127.0.0.1:$PORT1/origin" | grep -qx 67108864 || fail "the old size is not served"
stop_run second.log
echo "run.sh: ok"
