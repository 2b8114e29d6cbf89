#!/usr/bin/env bash
# A full host filesystem is an ordinary ENOSPC, not a failed store: a sparse
# store on a small tmpfs, the filesystem filled to the brim. Writes that need
# a copy get ENOSPC, reads and overwrites go on, the store never fails,
# check is clean, and once space is freed writes succeed without a restart.
source "$(dirname "$0")/lib.sh"
need qemu-io

mkdir small
mount -t tmpfs -o size=24m tmpfs "$WORK/small" 2>/dev/null || skip "cannot mount a tmpfs here (not root?)"

create_store origin.img small/store.img --origin-size 32M --store-size 256M --chunk-size 64K >/dev/null
rm -f "$SOCK" "$MULTISNAP_CONTROL"
"$MULTISNAP" serve small/store.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket "$SOCK"
wait_for_socket "$MULTISNAP_CONTROL"

qio() { qemu-io -f raw "$@" 2>&1 || true; }  # its output is checked, not its status
has() { grep -q -- "$1" <<<"$2"; }  # no pipe: grep -q must not SIGPIPE a writer under pipefail
expect_read() {  # expect_read PATTERN OFFSET LENGTH EXPORT
  local out
  out=$(qio -c "read -P $1 $2 $3" "$(uri "$4")")
  has "^read " "$out" && ! has "fail" "$out" || fail "$4 at $2 should read $1: $out"
}
expect_write() {  # expect_write PATTERN OFFSET LENGTH EXPORT
  local out
  out=$(qio -c "write -P $1 $2 $3" "$(uri "$4")")
  has "^wrote " "$out" || fail "write of $1 at $2 to $4: $out"
}
qio -c 'write -P 0x11 0 32M' "$(uri origin)" >/dev/null
ms snapshot create --name s1 >/dev/null
# One chunk copied before the filesystem fills: overwriting it later needs no space.
expect_write 0x33 16M 1M origin

# Fill the filesystem to the brim.
dd if=/dev/zero of=small/filler bs=64k 2>/dev/null || true
[ "$(df --output=avail -k small | tail -1)" -lt 64 ] || fail "the filesystem did not fill"

# A write that needs copies: ENOSPC, not EIO.
out=$(qio -c 'write -P 0x22 0 1M' "$(uri origin)")
has "No space left on device" "$out" || fail "a write needing a copy on a full filesystem: $out"
# The store has not failed: reads and overwrites go on.
st=$(ms status --json)
has '"failure": *null' "$st" || fail "the store failed: $st"
expect_read 0x11 0 1M snapshot/s1
expect_read 0x11 0 1M origin        # the refused write changed nothing
expect_write 0x44 16M 1M origin     # an overwrite of a copied chunk
expect_read 0x44 16M 1M origin
expect_read 0x11 16M 1M snapshot/s1
! grep -q "copy job" serve.log || fail "a copy job failed: $(grep 'copy job' serve.log)"

# Space freed: writes succeed again, without a restart.
rm small/filler
expect_write 0x22 0 1M origin       # the write refused before
expect_read 0x22 0 1M origin
expect_read 0x11 0 1M snapshot/s1
st=$(ms status --json)
has '"failure": *null' "$st" || fail "the store failed: $st"

kill -TERM "$SERVE_PID"
wait "$SERVE_PID" || fail "serve did not exit cleanly"
SERVE_PID=
out=$(ms check small/store.img) || fail "check: $out"
has clean "$out" || fail "check: $out"

# create --preallocate takes the whole file now, and says so when it cannot.
expect_fail "cannot preallocate" ms create origin2.img small/big.img --origin-size 16M --store-size 64M --preallocate
ms create origin3.img small/pre.img --origin-size 1M --store-size 3M --preallocate >/dev/null
[ "$(du -k small/pre.img | cut -f1)" -ge 3000 ] || fail "--preallocate left the store sparse"
# A store nearly full of its own: status flags low space and serve logs it.
create_store origin4.img low.img --origin-size 16M --store-size 10M >/dev/null
rm -f "$SOCK" "$MULTISNAP_CONTROL"
"$MULTISNAP" serve low.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket "$SOCK"
wait_for_socket "$MULTISNAP_CONTROL"
has '"low": *false' "$(ms status --json)" || fail "a new store is low on space"
qio -c 'write -P 0x11 0 16M' "$(uri origin)" >/dev/null   # data, not holes: the next writes copy
ms snapshot create >/dev/null
qio -c 'write -P 0x55 0 16M' "$(uri origin)" >/dev/null
st=$(ms status --json)
has '"low": *true' "$st" || fail "a full store is not flagged low on space: $st"
has "WARNING    low on space" "$(ms status)" || fail "status does not warn"
for _ in $(seq 70); do grep -q "low on space" serve.log && break; sleep 0.1; done
grep -q "WARN: the store is low on space" serve.log || fail "serve did not log the low space"
kill -TERM "$SERVE_PID"
wait "$SERVE_PID" || fail "serve did not exit cleanly"
SERVE_PID=
echo "host filesystem full: ENOSPC, store kept serving, writes resumed; low space flagged and logged"
