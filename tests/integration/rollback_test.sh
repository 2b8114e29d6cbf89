#!/usr/bin/env bash
# multisnap rollback through the CLI: the origin becomes the snapshot while
# another snapshot's export is being read; refused while the origin has
# clients unless --force; kill -9 of serve in the middle: the store opens,
# check is clean, the origin is not offered until the rollback (resumed by
# itself) is done, and then it is exactly the snapshot.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
need nbdcopy qemu-io
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

create_store origin.img store.img --origin-size 96M --chunk-size 64K --store-size 1G >/dev/null
start_serve
qemu-io -f raw -c 'write -P 0x11 0 80M' "$(uri origin)" >/dev/null
ms snapshot create --name one >/dev/null
qemu-io -f raw -c 'write -P 0x22 16M 64M' -c 'write -z 0 4M' "$(uri origin)" >/dev/null
ms snapshot create --name two >/dev/null
qemu-io -f raw -c 'write -P 0x33 8M 40M' "$(uri origin)" >/dev/null
nbdcopy "$(uri snapshot/one)" one.img
nbdcopy "$(uri snapshot/two)" two.img

# Refused while a client has the origin open.
$PY - "$(uri origin)" <<'PY' &
import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(30)
PY
holder=$!
for _ in $(seq 100); do [ "$(ms status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["nbd"]["connections"])')" -ge 1 ] && break; sleep 0.05; done
expect_fail "use --force" ms rollback one

# With --force, while snapshot two is being read all along.
( for i in 1 2 3; do nbdcopy "$(uri snapshot/two)" - | cmp - two.img || exit 1; done ) &
reader=$!
ms rollback one --force --progress 2>progress.txt | grep -q "rolled the origin back to snapshot one" || fail "rollback output"
wait $reader || fail "snapshot two read differently during the rollback"
kill $holder 2>/dev/null || true
grep -q "rolled back" progress.txt || fail "no progress line"
nbdcopy "$(uri origin)" - | cmp - one.img || fail "the origin is not snapshot one after the rollback"
nbdcopy "$(uri snapshot/two)" - | cmp - two.img || fail "snapshot two changed"
nbdcopy "$(uri snapshot/one)" - | cmp - one.img || fail "snapshot one changed"

# kill -9 in the middle of a rollback to two; it resumes at restart.
qemu-io -f raw -c 'write -P 0x44 0 90M' "$(uri origin)" >/dev/null
ms rollback two &
rb=$!
for _ in $(seq 200); do
  ms status --json | $PY -c 'import json,sys; r=json.load(sys.stdin)["rollback"]; sys.exit(0 if r["active"] and r["done_chunks"] > 0 else 1)' && break
  sleep 0.01
done
kill -KILL "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=
wait $rb 2>/dev/null || true
for _ in $(seq 100); do ms check store.img >check.txt 2>&1 && break; grep -q "in use" check.txt || break; sleep 0.05; done
grep -q clean check.txt || { cat check.txt; fail "check after kill -9 during a rollback"; }
start_serve
for _ in $(seq 600); do
  listed=$(nbdinfo --list "nbd+unix:///?socket=$SOCK" 2>/dev/null | grep -c 'export="origin"' || true)
  if ms status --json | $PY -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["rollback"]["active"] else 1)'; then
    # Still running after the list was taken: the list must not have had the origin.
    [ "$listed" = 0 ] || fail "the origin was offered during the rollback"
  else
    break
  fi
  sleep 0.05
done
grep -q "resuming the rollback" serve.log || fail "the rollback did not resume"
nbdcopy "$(uri origin)" - | cmp - two.img || fail "the origin is not snapshot two after the resumed rollback"
nbdcopy "$(uri snapshot/one)" - | cmp - one.img || fail "snapshot one changed"
stop_serve
ms check store.img | grep -q clean || fail "check at the end"
echo "rollback: ok"
