#!/usr/bin/env bash
# systemd socket activation: serve takes its listening sockets from
# LISTEN_FDS (systemd-socket-activate here), tells the control socket from
# NBD ones by LISTEN_FDNAMES, and uses nothing else when started that way;
# libnbd's `[ multisnap serve STORE ]` form (nbdinfo --map); the ExecStart
# line of packaging/systemd/multisnap@.service run as systemd would run it.
UNITS=$(readlink -f "$(dirname "$0")/../../packaging/systemd")
source "$(dirname "$0")/lib.sh"
need systemd-socket-activate nbdinfo nbdcopy

create_store origin.img store.img --origin-size 32M --chunk-size 64K >/dev/null
head -c 4M /dev/urandom > a.bin

# wait_gone PID: the process has exited; its status must be 0.
wait_exit0() {
  local rc=0
  wait "$1" || rc=$?
  [ $rc -eq 0 ] || fail "serve exited with $rc"
}

# ---- An NBD and a control socket, named; no --nbd, no --control
mkdir -p run cwd
(cd cwd && exec systemd-socket-activate -l "$WORK/run/nbd.sock" -l "$WORK/run/ctl.sock" --fdname=nbd:control \
  "$MULTISNAP" serve "$WORK/store.img") >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket run/nbd.sock
wait_for_socket run/ctl.sock
U="nbd+unix:///origin?socket=$WORK/run/nbd.sock"
nbdcopy a.bin "$U"          # the first connection starts serve
nbdcopy "$U" back.bin
cmp <(head -c 4M back.bin) a.bin || fail "data through an inherited socket differs"
grep -q "serving NBD on unix:$WORK/run/nbd.sock" serve.log || fail "the inherited NBD socket is not logged"
MULTISNAP_CONTROL=$WORK/run/ctl.sock ms snapshot create --name act >/dev/null || fail "control through the inherited socket"
[ "$(nbdinfo --size "nbd+unix:///snapshot/act?socket=$WORK/run/nbd.sock")" = $((32 << 20)) ] || fail "snapshot export"
[ -z "$(ls cwd)" ] || fail "serve made files in its directory when activated: $(ls cwd)"
grep -q "control socket $WORK/run/ctl.sock" serve.log || fail "the inherited control socket is not logged"
kill -TERM "$SERVE_PID"; wait_exit0 "$SERVE_PID"; SERVE_PID=
# The sockets belong to whoever made them (systemd): serve leaves the files.
[ -S run/nbd.sock ] && [ -S run/ctl.sock ] || fail "serve removed sockets it did not make"

# ---- Only an NBD socket: no control socket at all, even with $MULTISNAP_CONTROL set
rm -f run/*.sock
: > serve.log
(cd cwd && MULTISNAP_CONTROL=$WORK/run/env.ctl exec systemd-socket-activate -l "$WORK/run/nbd.sock" --fdname=nbd \
  "$MULTISNAP" serve "$WORK/store.img") >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket run/nbd.sock
nbdinfo --size "$U" >/dev/null || fail "activated serve without names"
[ ! -e run/env.ctl ] && [ -z "$(ls cwd)" ] || fail "a control socket was made when none was asked for"
grep -q "no control socket" serve.log || fail "no word of the missing control socket"
# --nbd adds to the inherited sockets.
kill -TERM "$SERVE_PID"; wait_exit0 "$SERVE_PID"; SERVE_PID=
rm -f run/*.sock
: > serve.log
(cd cwd && exec systemd-socket-activate -l "$WORK/run/nbd.sock" "$MULTISNAP" serve "$WORK/store.img" \
  --nbd "unix:$WORK/run/extra.sock" --control "$WORK/run/c.ctl") >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket run/nbd.sock
nbdinfo --size "$U" >/dev/null || fail "activated serve with --nbd"
wait_for_socket run/extra.sock
wait_for_socket run/c.ctl
nbdinfo --size "nbd+unix:///origin?socket=$WORK/run/extra.sock" >/dev/null || fail "--nbd next to activation"
kill -TERM "$SERVE_PID"; wait_exit0 "$SERVE_PID"; SERVE_PID=
[ ! -e run/extra.sock ] && [ ! -e run/c.ctl ] || fail "serve left the sockets it made"

# ---- Variables meant for another process are ignored (and fd 3 untouched)
rm -f run/*.sock
LISTEN_PID=1 LISTEN_FDS=1 LISTEN_FDNAMES=control "$MULTISNAP" serve store.img --nbd "unix:$SOCK" \
  --control "$MULTISNAP_CONTROL" 3</dev/null >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket "$SOCK"
nbdinfo --size "$(uri origin)" >/dev/null || fail "serve with foreign LISTEN_* variables"
stop_serve
# Malformed ones are an error, not a guess.
expect_fail "LISTEN_FDS" bash -c 'LISTEN_PID=$$ LISTEN_FDS=x exec "$0" serve store.img' "$MULTISNAP"
expect_fail "not open" bash -c 'LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" serve store.img 3</dev/null 4<&-' "$MULTISNAP"
expect_fail "inherited descriptor 3 is not a socket" bash -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve store.img 3<store.img' "$MULTISNAP"

# ---- libnbd's [ ... ] form (socket activation by the client), with defaults
mkdir -p bracket && cd bracket
nbdinfo --map -- [ "$MULTISNAP" serve ../store.img --log-level warn ] > ../map.txt
cd "$WORK"
grep -q "^ *0 *4194304 *0 *data" map.txt || fail "nbdinfo --map -- [ serve ] gave: $(cat map.txt)"
[ -z "$(ls bracket)" ] || fail "[ serve ] left files behind: $(ls bracket)"
nbdcopy -- [ "$MULTISNAP" serve store.img --log-level warn ] back2.bin
cmp <(head -c 4M back2.bin) a.bin || fail "nbdcopy from [ serve ] differs"
check_out=$(ms check store.img) || fail "store not clean after [ serve ]: $check_out"

# ---- The unit files: ExecStart run as systemd would, with the socket unit's socket
svc=$UNITS/multisnap@.service sock=$UNITS/multisnap@.socket
[ -f "$svc" ] && [ -f "$sock" ] || fail "unit files missing"
if command -v systemd-analyze >/dev/null; then
  cp "$svc" "$WORK/multisnap@.service"; cp "$sock" "$WORK/multisnap@.socket"
  out=$(cd "$WORK" && systemd-analyze verify "$WORK/multisnap@vm1.service" "$WORK/multisnap@vm1.socket" 2>&1 \
        | grep -v "Command multisnap is not executable" || true)
  [ -z "$out" ] || fail "systemd-analyze verify: $out"
fi
exec_start=$(sed -n 's/^ExecStart=//p' "$svc")
listen=$(sed -n 's/^ListenStream=//p' "$sock")
fdname=$(sed -n 's/^FileDescriptorName=//p' "$sock")
[ -n "$exec_start" ] && [ -n "$listen" ] && [ "$fdname" = nbd ] || fail "unexpected unit contents"
# Instance vm1 under $WORK/lib and $WORK/run instead of /var/lib and /run.
mkdir -p lib/multisnap/vm1 runroot/multisnap/vm1
"$MULTISNAP" create "$WORK/lib/multisnap/vm1/origin.img" "$WORK/lib/multisnap/vm1/store.img" --origin-size 16M \
  --format "$FORMAT" >/dev/null
subst() { sed -e "s|%i|vm1|g" -e "s|/var/lib/multisnap|$WORK/lib/multisnap|g" -e "s|/run/multisnap|$WORK/runroot/multisnap|g" \
              -e "s|\$MULTISNAP_SERVE_ARGS||g"; }
cmd=$(echo "$exec_start" | subst)
nbd_path=$(echo "$listen" | subst)
[ "${cmd%% *}" = multisnap ] || fail "ExecStart does not run multisnap: $cmd"
# shellcheck disable=SC2086 # the unit's words, split as systemd splits them (no quotes in it)
systemd-socket-activate -l "$nbd_path" --fdname="$fdname" "$MULTISNAP" ${cmd#multisnap } >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket "$nbd_path"
nbdcopy a.bin "nbd+unix:///origin?socket=$nbd_path"
wait_for_socket "$WORK/runroot/multisnap/vm1/control.sock"
MULTISNAP_CONTROL=$WORK/runroot/multisnap/vm1/control.sock ms status --json | grep -q "lib/multisnap/vm1/store.img" \
  || fail "the unit's control socket does not serve the instance's store"
kill -TERM "$SERVE_PID"; wait_exit0 "$SERVE_PID"; SERVE_PID=
echo "PASSED"
