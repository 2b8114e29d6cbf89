#!/usr/bin/env bash
# The multisnap command: create, serve, snapshot create/list/delete, status,
# check, dump, and the errors users get.
source "$(dirname "$0")/lib.sh"

ms --version | grep -q "multisnap [0-9]"
for c in create serve "snapshot create" "snapshot delete" "snapshot list" status check dump; do
  ms $c --help | grep -q -i usage || fail "no help for $c"
done

# create: bad input is refused with one clear sentence and changes nothing.
expect_fail "give --origin-size" ms create origin.img store.img
expect_fail "unknown size suffix" ms create origin.img store.img --origin-size 12Q
expect_fail "not a size" ms create origin.img store.img --origin-size lots
expect_fail "power of two" ms create origin.img store.img --origin-size 64M --chunk-size 3000
expect_fail "range or bitmask" ms create origin.img store.img --origin-size 64M --format btrfs
[ ! -e store.img ] || [ ! -s store.img ] || fail "a failed create left a store behind"
create_store origin.img store.img --origin-size 64M --chunk-size 64K | grep -q "$FORMAT store"
[ "$(stat -c %s origin.img)" = 67108864 ] || fail "origin size"
[ "$(du -k origin.img | cut -f1)" -lt 1024 ] || fail "origin is not sparse"
expect_fail "already holds a multisnap store" ms create origin.img store.img
expect_fail "disagrees\|not the" ms create origin.img store2.img --origin-size 32M
expect_fail "already holds a multisnap store" create_store origin.img store.img
ms check store.img | grep -q clean

# Online commands without a server say so.
expect_fail "no multisnap is serving" ms snapshot list
# An unknown command is named; with --json an error is JSON on stdout too.
expect_fail "unknown command 'frobnicate'" ms frobnicate
expect_fail "unknown command 'snapshot frob'" ms snapshot frob --json
rc=0; ms status --json >err.json 2>/dev/null || rc=$?
[ $rc = 1 ] || fail "status without a server exited $rc"
$PY - <<'PY'
import json
e = json.load(open("err.json"))["error"]
assert e["code"] == "not-found" or e["code"] == "io-error", e
assert "no multisnap is serving" in e["message"], e
PY
rc=0; ms snapshot delete --json >err.json 2>/dev/null || rc=$?
[ $rc = 2 ] || fail "a command line that does not parse exited $rc"
$PY -c 'import json; e = json.load(open("err.json"))["error"]; assert e["code"] == "invalid-argument", e'
expect_fail "1-64 characters" ms snapshot create --name ''

start_serve
# Where it listens is logged once; a listing client leaving is not news.
[ "$(grep -c "$SOCK" serve.log)" = 1 ] || fail "the NBD address is logged $(grep -c "$SOCK" serve.log) times"
if command -v nbdinfo >/dev/null; then
  nbdinfo --list "$(uri "")" >/dev/null
  sleep 0.2
  ! grep -q "INFO.*\(Broken pipe\|closed\)" serve.log || fail "a client leaving is logged at INFO: $(grep closed serve.log)"
fi
expect_fail "in use" ms check store.img
expect_fail "in use\|already" "$MULTISNAP" serve store.img --nbd unix:$WORK/other.sock --control $WORK/other.ctl
# Nothing a refused command touches is harmed: the running store, its
# control socket, a file given by mistake.
size_before=$(stat -c %s store.img)
expect_fail "in use" ms create other-origin.img store.img --origin-size 1M --force --store-size 1M
[ "$(stat -c %s store.img)" = "$size_before" ] || fail "a refused create resized the served store"
create_store o2.img s2.img --origin-size 8M >/dev/null
expect_fail "already listening" "$MULTISNAP" serve s2.img --nbd unix:$WORK/s2.sock --control "$MULTISNAP_CONTROL"
ms status >/dev/null || fail "the first serve lost its control socket"
echo "keep me" > notes.txt
expect_fail "not a socket" "$MULTISNAP" serve s2.img --nbd unix:$WORK/s2.sock --control notes.txt
[ "$(cat notes.txt)" = "keep me" ] || fail "serve removed a file given as --control"

id1=$(ms snapshot create --name base)
[ "$id1" = 1 ] || fail "first snapshot ID is $id1"
id2=$(ms snapshot create)
if [ "$FORMAT" = range ]; then
  id3=$(ms snapshot create --of base --name clone)
  expect_fail "one level" ms snapshot create --of clone
else
  expect_fail "cannot take snapshots of snapshots" ms snapshot create --of base
  id3=$(ms snapshot create --name clone)
fi
expect_fail "already exists" ms snapshot create --name base
expect_fail "all digits" ms snapshot create --name 1234
expect_fail "no snapshot" ms snapshot create --of nosuch

ms snapshot list --json > list.json
$PY - "$FORMAT" "$id1" "$id2" "$id3" <<'PY'
import json, sys, datetime
ids = [int(x) for x in sys.argv[2:]]
snaps = json.load(open("list.json"))
assert [s["id"] for s in snaps] == ids, snaps
assert snaps[0]["name"] == "base" and snaps[1]["name"] is None and snaps[2]["name"] == "clone", snaps
assert snaps[0]["of"] is None, snaps
assert snaps[2]["of"] == ({"id": ids[0], "name": "base"} if sys.argv[1] == "range" else None), snaps
for s in snaps:
    datetime.datetime.fromisoformat(s["created"].replace("Z", "+00:00"))
    assert s["export"] == "snapshot/%d" % s["id"]
PY
ms snapshot list | grep -q "clone"
if [ "$FORMAT" = range ]; then
  ms snapshot list | grep -q "^$id3 *clone *$id1 (base) " || fail "snapshot list does not name a clone's parent"
fi

ms status --json > status.json
$PY - "$FORMAT" <<'PY'
import json, sys
s = json.load(open("status.json"))
assert s["format"] == sys.argv[1] and s["snapshots"] == 3, s
if sys.argv[1] == "bitmask":
    assert s["snapshot_slots_free"] == 61, s
assert s["store"]["chunk_size"] == 65536 and s["origin"]["size"] == 64 << 20, s
for k in ("data", "metadata"):
    assert s["store"][k]["total_bytes"] > 0
assert "reclaim" in s and "io" in s and "copies" in s and s["failure"] is None
sp = s["store"]["space"]  # one figure and its parts; a new 96M store is not low on space
assert sp["free_bytes"] == sp["data_free_bytes"] + sp["metadata_free_bytes"] > 0, sp
assert sp["shared"] is True and sp["low"] is False and sp["low_threshold_bytes"] > 0, sp
assert s["store"]["metadata"]["borrowed_chunks"] == 0, s
PY
ms status | grep -q "^free " || fail "status does not show free space"
ms status | grep -q "snapshots  3"
[ "$FORMAT" = range ] || ms status | grep -q "61 slots free" || fail "status does not show the free slots"

# Deleting a snapshot a client uses is refused; --force disconnects it.
nbdsh -u "$(uri snapshot/$id2)" -c 'import time; time.sleep(30)' &
client=$!
for _ in $(seq 100); do
  [ "$(ms status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["nbd"]["connections"])')" = 1 ] && break
  sleep 0.05
done
expect_fail "use --force" ms snapshot delete "$id2"
ms snapshot delete "$id2" --force | grep -q "disconnected 1 client"
kill $client 2>/dev/null || true
wait $client 2>/dev/null || true
expect_fail "no snapshot" ms snapshot delete "$id2"
ms snapshot delete clone >/dev/null
[ "$(ms snapshot list --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] || fail "list after delete"
nbdinfo --list "nbd+unix:///?socket=$SOCK" > exports.txt 2>/dev/null || true
! grep -q "snapshot/$id2" exports.txt || fail "a deleted snapshot is still exported"

# IDs are never reused.
id4=$(ms snapshot create)
[ "$id4" = 4 ] || fail "new ID after deletes is $id4, not 4"

# Several at once: every one checked first, then all deleted in one commit.
a=$(ms snapshot create --name bulk-a); b=$(ms snapshot create); c=$(ms snapshot create)
count() { ms snapshot list --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
before=$(count)
expect_fail "no snapshot 'nosuch'" ms snapshot delete "$a" nosuch "$c"
expect_fail "named twice" ms snapshot delete "$a" bulk-a
[ "$(count)" = "$before" ] || fail "a refused delete of several deleted some"
ms snapshot delete bulk-a "$b" "$c" | grep -q "deleted 3 snapshots: $a $b $c;" || fail "delete of several"
grep -q "deleted 3 snapshots ($a to $c) in one commit" serve.log || fail "the three deletes were not one commit"
[ "$(count)" = $((before - 3)) ] || fail "count after deleting three"
d=$(ms snapshot create); e=$(ms snapshot create)
ms snapshot delete --json "$d" "$e" | $PY -c "import json,sys; j=json.load(sys.stdin); assert j['deleted'] == [$d, $e], j"
# A refusal with --json: one document on stdout, ok false, nothing deleted.
f=$(ms snapshot create)
rc=0; ms snapshot delete --json "$f" nosuch >refused.json 2>/dev/null || rc=$?
[ $rc = 1 ] || fail "a refused delete of several exited $rc"
$PY -c "import json; j=json.load(open('refused.json')); assert j['ok'] is False and j['deleted'] == [] and j['error']['code'] == 'not-found', j"
ms snapshot delete "$f" >/dev/null

stop_serve
ms check store.img | grep -q clean
ms check --json store.img | $PY -c 'import json,sys; assert json.load(sys.stdin)["clean"]'
ms dump store.img | grep -q "snapshot 1 base"
ms dump --json store.img | $PY -c 'import json,sys; d=json.load(sys.stdin); assert len(d["snapshots"]) == 2, d["snapshots"]'

# A damaged store: check reports it and exits non-zero.
$PY - <<'PY'
import struct
with open("store.img", "r+b") as f:
    sb = f.read(4096)
    meta_start, meta_blocks = struct.unpack_from("<QQ", sb, 136)
    for b in range(meta_start, meta_start + meta_blocks):  # every metadata block in use
        f.seek(b * 4096)
        if f.read(32).strip(b"\0"):
            f.seek(b * 4096 + 100)
            f.write(b"\xff" * 16)
PY
rc=0; ms check store.img > check.txt || rc=$?
[ $rc -ne 0 ] || fail "check passed a damaged store"
grep -q "^problem: .*checksum" check.txt || fail "check did not name the damage: $(cat check.txt)"
echo "cli: ok"
