#!/usr/bin/env bash
# multisnap grow: a store that filled up grows online while a client
# writes, the writes that failed go through afterwards, status shows the new
# size; kill -9 in the middle of grows leaves a store that opens at the old
# or the new size and checks clean; offline grow; a grown block device (a
# loop device) is picked up without --store-size.
source "$(dirname "$0")/lib.sh"
need qemu-io jq

M=$((1 << 20))
create_store origin.img store.img --origin-size 64M --store-size 40M --max-store-size 1G >/dev/null
start_serve
w() { qemu-io -f raw -c "$2" "$(uri "$1")"; }
size_used() { ms status --json | jq -e '.store.used_size'; }
[ "$(size_used)" = $((40 * M)) ] || fail "used_size $(size_used), want 40M"
max=$(ms status --json | jq -e '.store.max_size')
[ "$max" -ge $((1024 * M)) ] && [ "$max" -le $((1280 * M)) ] || fail "max_size $max, want 1G rounded up to whole bitmaps"

# Fill: 64M of origin data, a snapshot, then 64M of overwrites that need 64M
# of copies in a 40M store: the writer gets ENOSPC part of the way.
w origin 'write -P 0x11 0 64M' >/dev/null
ms snapshot create --name s1 >/dev/null
out=$(w origin 'write -P 0x22 0 64M' 2>&1) && fail "64M of copies fit a 40M store: $out"
echo "$out" | grep -qi "no space" || fail "the writer did not get ENOSPC: $out"
w snapshot/s1 'read -P 0x11 0 64M' >/dev/null || fail "snapshot reads stopped on a full store"
[ "$(ms status --json | jq -e '.store.space.low')" = true ] || fail "a full store is not low on space"

# Grow while a writer runs (its writes wait on the full store or get
# ENOSPC until the grow; a second pass after it must succeed).
( w origin 'write -P 0x22 0 64M' >writer1.txt 2>&1 || true ) &
writer=$!
sleep 0.2
ms grow --store-size 200M | grep -q "grew from 40 MiB to 200 MiB" || fail "grow did not say what it did"
wait $writer
w origin 'write -P 0x22 0 64M' >/dev/null || fail "writes fail after the store grew"
w origin 'read -P 0x22 0 64M' >/dev/null || fail "origin contents"
w snapshot/s1 'read -P 0x11 0 64M' >/dev/null || fail "the snapshot changed across the grow"
[ "$(size_used)" = $((200 * M)) ] || fail "used_size $(size_used) after grow, want 200M"
[ "$(stat -c %s store.img)" = $((200 * M)) ] || fail "store file is $(stat -c %s store.img) bytes"
[ "$(stat -c %b store.img)" -lt $((200 * M / 512)) ] || fail "the grown file is not sparse"

# A second grow while a writer runs steadily (no failure expected at all).
ms snapshot create --name s2 >/dev/null
( w origin 'write -P 0x33 0 64M' >writer2.txt 2>&1; echo $? >writer2.rc ) &
writer=$!
sleep 0.1
ms grow --store-size 300M >/dev/null
wait $writer
[ "$(cat writer2.rc)" = 0 ] || fail "a writer failed during a grow: $(cat writer2.txt)"
w snapshot/s2 'read -P 0x22 0 64M' >/dev/null || fail "s2"

# What grow refuses.
expect_fail "never shrinks" ms grow --store-size 100M
expect_fail "at most" ms grow --store-size 5G
expect_fail "nothing to grow" ms grow
ms grow --json --store-size 310M | jq -e '.new_size == 325058560 and .old_size == 314572800' >/dev/null \
  || fail "grow --json"

# kill -9 in the middle of grows while a writer runs: the store opens at
# the old or the new size, checks clean, and the snapshots are intact.
for i in 1 2 3 4 5 6; do
  before=$(size_used)
  after=$((before + 8 * M))
  ( w origin "write -P 0x4$i 0 32M" >/dev/null 2>&1 || true ) &
  writer=$!
  ( ms grow --store-size $after >/dev/null 2>&1 || true ) &
  grower=$!
  sleep 0.0$((RANDOM % 10))
  kill -KILL "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=
  wait $writer $grower || true
  ms check store.img >check.txt || { cat check.txt; fail "check after kill -9 during a grow ($i)"; }
  start_serve
  now=$(size_used)
  [ "$now" = "$before" ] || [ "$now" = "$after" ] || fail "after kill -9: size $now, neither $before nor $after"
  echo "kill -9 during grow $i: opened at $now (before $before)"
done
w snapshot/s1 'read -P 0x11 0 64M' >/dev/null || fail "s1 after the kills"
w snapshot/s2 'read -P 0x22 0 64M' >/dev/null || fail "s2 after the kills"
stop_serve

expect_fail "below the store's size" create_store o3.img s3.img --origin-size 16M --store-size 64M --max-store-size 32M
[ ! -e s3.img ] || fail "a failed create left its store file behind"

# Offline.
ms grow --store store.img --store-size 400M | grep -q "to 400 MiB" || fail "offline grow"
ms check store.img >/dev/null || fail "check after offline grow"
start_serve
[ "$(size_used)" = $((400 * M)) ] || fail "used_size after offline grow: $(size_used)"
expect_fail "in use by another multisnap" ms grow --store store.img --store-size 500M
stop_serve

# A block device that grew: a loop device over a file, enlarged.
[ "$FORMAT" = range ] || exit 0
command -v losetup >/dev/null || skip "losetup is not installed (the rest passed)"
truncate -s 64M backing.img
loop=$(losetup -f --show backing.img 2>/dev/null) || skip "no loop devices here (the rest passed)"
trap 'losetup -d "$loop" 2>/dev/null || true; cleanup' EXIT
create_store origin2.img "$loop" --origin-size 32M --max-store-size 256M --force >/dev/null
rm -f "$SOCK" "$MULTISNAP_CONTROL"
"$MULTISNAP" serve "$loop" --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket "$MULTISNAP_CONTROL"
expect_fail "grow it first" ms grow --store-size 128M
truncate -s 128M backing.img
losetup -c "$loop"
ms grow | grep -q "to 128 MiB" || fail "the grown loop device was not picked up"
[ "$(size_used)" = $((128 * M)) ] || fail "loop device: used_size $(size_used)"
stop_serve
ms check "$loop" >/dev/null || fail "check of the grown block device"
echo "grow: ok"
