#!/usr/bin/env bash
# snapshot list --space: each snapshot's exclusive and shared bytes, and the
# contract behind them: deleting a snapshot alone frees exactly its
# exclusive bytes once reclaim is done (status store.data.used_bytes).
source "$(dirname "$0")/lib.sh"
need qemu-io

create_store origin.img store.img --origin-size 64M --chunk-size 64K >/dev/null
start_serve
K=65536
w() { qemu-io -f raw -c "$2" "$(uri "$1")" >/dev/null; }
space() { ms snapshot list --json --space; }
field() {  # field SNAPSHOT-NAME KEY
  space | jq -e --arg n "$1" --arg k "$2" '.[] | select(.name == $n) | .[$k]'
}
used() { ms status --json | jq -e '.store.data.used_bytes'; }
wait_reclaim() {
  for _ in $(seq 600); do
    [ "$(ms status --json | jq '.reclaim.active')" = false ] && return 0
    sleep 0.05
  done
  fail "reclaim did not finish"
}

w origin 'write -P 0x11 0 16M'
ms snapshot create --name a >/dev/null
w origin 'write -P 0x22 0 8M'           # 8M preserved for a alone
[ "$(field a exclusive_bytes)" = $((8 << 20)) ] || fail "a: exclusive $(field a exclusive_bytes), want 8M"
[ "$(field a shared_bytes)" = 0 ] || fail "a: shared"
ms snapshot create --name b >/dev/null
w origin 'write -P 0x33 4M 8M'          # 8M-12M shared by a and b; 4M-8M b's alone
[ "$(field a exclusive_bytes)" = $((8 << 20)) ] || fail "a: exclusive after b"
[ "$(field a shared_bytes)" = $((4 << 20)) ] || fail "a: shared after b: $(field a shared_bytes)"
[ "$(field b exclusive_bytes)" = $((4 << 20)) ] || fail "b: exclusive: $(field b exclusive_bytes)"
[ "$(field b shared_bytes)" = $((4 << 20)) ] || fail "b: shared"
w snapshot/b 'write -P 0x44 20M 1M'     # b's own copy
w snapshot/b 'write -z 8M 1M'           # b reads zeros there: a's alone now
w snapshot/a 'write -P 0x55 9M 64K'     # a leaves a shared chunk
ms snapshot create --name c >/dev/null
w origin 'write -P 0x66 30M 2M'         # a, b and c share it
if [ "$FORMAT" = range ]; then
  ms snapshot create --of a --name a1 >/dev/null   # a's chunks become shared with a1
  w snapshot/a1 'write -P 0x77 40M 1M'
  w snapshot/a 'write -P 0x78 0 256K'
fi
ms snapshot list --space | grep -q "EXCLUSIVE *SHARED" || fail "no EXCLUSIVE and SHARED columns"
ms snapshot list --space --progress 2>progress.txt >/dev/null
grep -q "exceptions (100%)" progress.txt || fail "no progress line: $(cat progress.txt)"
ms snapshot list | grep -q EXCLUSIVE && fail "EXCLUSIVE without --space"
space | jq -e 'all(.[]; (.exclusive_bytes | type) == "number" and (.shared_bytes | type) == "number")' >/dev/null \
  || fail "--json --space lacks the fields"

# The contract, snapshot by snapshot, in an order that deletes parents too.
names="b a c"
[ "$FORMAT" = range ] && names="b a c a1"   # a goes while its child a1 lives
for name in $names; do
  excl=$(field "$name" exclusive_bytes)
  before=$(used)
  ms snapshot delete "$name" >/dev/null
  wait_reclaim
  after=$(used)
  [ $((before - after)) = "$excl" ] || fail "deleting $name freed $((before - after)) bytes, its exclusive_bytes said $excl"
  echo "deleted $name: freed $excl bytes as listed"
done
[ "$(used)" = 0 ] || fail "data left after deleting every snapshot: $(used)"
stop_serve
ms check store.img | grep -q clean || fail "check"
echo PASS
