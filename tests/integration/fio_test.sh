#!/usr/bin/env bash
# fio --ioengine=nbd with crc32c verification on the origin and on a
# writable snapshot, while other snapshots must stay exactly as they were.
source "$(dirname "$0")/lib.sh"
need fio nbdcopy qemu-img
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd engine"

create_store origin.img store.img --origin-size 64M --chunk-size 64K >/dev/null
start_serve
run_fio() {  # uri rw extra...
  local u=$1 rw=$2; shift 2
  fio --name=verify --ioengine=nbd --uri="$u" --rw="$rw" --bs=4k --size=48M --iodepth=16 \
      --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 "$@" --output=fio.out \
    || { cat fio.out; fail "fio $rw on $u"; }
  grep -q "err= 0" fio.out || { cat fio.out; fail "fio reported errors"; }
}
# Fill, snapshot, then random writes with verification (every write after
# the snapshot is a first write to its chunk or an overwrite).
run_fio "$(uri origin)" write --bs=1M --iodepth=4
nbdcopy "$(uri origin)" before.bin
ms snapshot create --name before >/dev/null
run_fio "$(uri origin)" randwrite --bsrange=4k-256k  # across 64 KiB pieces of origin writes
qemu-img compare -q -f raw -F raw before.bin "$(uri snapshot/before)" || fail "the snapshot changed under origin writes"
# A writable snapshot, hammered while the origin is too.
ms snapshot create --name clone >/dev/null
nbdcopy "$(uri snapshot/clone)" clone-at-create.bin
run_fio "$(uri snapshot/clone)" randwrite --bsrange=4k-128k &
fio_snap=$!
run_fio "$(uri origin)" randrw --bs=16k
wait $fio_snap || fail "fio on the snapshot"
qemu-img compare -q -f raw -F raw before.bin "$(uri snapshot/before)" || fail "the first snapshot changed"
ms status --json | $PY -c 'import json,sys; s=json.load(sys.stdin); assert s["io"]["errors"] == 0, s["io"]; assert s["copies"]["chunks"] > 0; assert s["io"]["origin_writes_inline"] > 0, s["io"]'
# Copies went around the page cache: required where the file system is
# known to take O_DIRECT (ext4, xfs), noted elsewhere (tmpfs never does).
direct=$(ms status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["copies"]["direct"])')
case "$(stat -f -c %T .)" in
  ext2/ext3|ext4|xfs) [ "$direct" = True ] || fail "copies.direct is $direct on $(stat -f -c %T .)" ;;
  *) [ "$direct" = True ] || echo "note: copies went through the page cache on $(stat -f -c %T .)" ;;
esac

stop_serve
ms check store.img | grep -q clean
# The same through the page cache, with each origin write in one call
# instead of 64 KiB pieces, and every origin write through io_uring: the
# snapshots read the same after the restart, and more first writes copy as
# they should.
start_serve --buffered-copies --whole-origin-writes --no-inline-origin-writes
[ "$(ms status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["copies"]["direct"])')" = False ] ||
  fail "--buffered-copies: copies.direct is not false"
qemu-img compare -q -f raw -F raw before.bin "$(uri snapshot/before)" || fail "the first snapshot changed after a restart"
ms snapshot create --name buffered >/dev/null
nbdcopy "$(uri origin)" buffered.bin
run_fio "$(uri origin)" randwrite --bsrange=4k-256k --size=16M
qemu-img compare -q -f raw -F raw buffered.bin "$(uri snapshot/buffered)" || fail "a snapshot changed under buffered copies"
[ "$(ms status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["io"]["origin_writes_inline"])')" = 0 ] ||
  fail "--no-inline-origin-writes: the engine thread wrote the origin itself"
stop_serve
ms check store.img | grep -q clean
echo "fio: ok"
