#!/usr/bin/env bash
# A real filesystem on an export: nbdfuse + losetup + mkfs.ext4 + mount on
# the origin, files written, a snapshot taken (with the filesystem frozen),
# more files written; the snapshot mounted read-only must hold exactly the
# files of snapshot time, and e2fsck -n must find both filesystems clean.
source "$(dirname "$0")/lib.sh"
need nbdfuse losetup mkfs.ext4 e2fsck mount umount fsfreeze fusermount3
[ "$(id -u)" = 0 ] || skip "needs root for losetup and mount"
[ -c /dev/fuse ] || skip "no /dev/fuse"
[ -e /dev/loop-control ] || skip "no loop devices"

create_store origin.img store.img --origin-size 256M --chunk-size 64K >/dev/null
start_serve

attach() {  # name uri [ro] -> prints the loop device
  mkdir -p "$WORK/$1"
  local ro=()
  [ "${3:-}" = ro ] && ro=(--readonly)
  nbdfuse "${ro[@]}" "$WORK/$1/disk" "$2" >>"$WORK/nbdfuse.log" 2>&1 &
  for _ in $(seq 100); do [ -e "$WORK/$1/disk" ] && break; sleep 0.05; done
  [ -e "$WORK/$1/disk" ] || skip "nbdfuse could not mount (FUSE unavailable here)"
  local lo_ro=()
  [ "${3:-}" = ro ] && lo_ro=(-r)
  losetup -f --show "${lo_ro[@]}" "$WORK/$1/disk" || skip "losetup failed (no free loop device?)"
}
detach() {  # name loopdev
  losetup -d "$2" || true
  fusermount3 -u "$WORK/$1" 2>/dev/null || umount "$WORK/$1" || true
}

lo=$(attach fuse "$(uri origin)")
mkfs.ext4 -q -F "$lo"
mkdir -p mnt snapmnt
mount "$lo" mnt
for i in $(seq 1 20); do head -c $((i * 37 * 1024)) /dev/urandom > "mnt/before-$i"; done
mkdir mnt/dir && echo "hello from snapshot time" > mnt/dir/note
(cd mnt && find . -type f | sort | xargs sha256sum) > before.sums

fsfreeze -f mnt
id=$(ms snapshot create --name fs)
fsfreeze -u mnt

for i in $(seq 1 10); do head -c $((i * 53 * 1024)) /dev/urandom > "mnt/after-$i"; done
echo "changed later" > mnt/dir/note
rm mnt/before-3
sync
(cd mnt && find . -type f | sort | xargs sha256sum) > after.sums

slo=$(attach fuse-snap "$(uri snapshot/fs)" ro)
mount -o ro,noload "$slo" snapmnt
(cd snapmnt && find . -type f | sort | xargs sha256sum) > snap.sums
diff before.sums snap.sums || fail "the snapshot does not hold exactly the files of snapshot time"
! cmp -s after.sums snap.sums || fail "the snapshot shows later changes"
umount snapmnt
e2fsck -fn "$slo" >fsck-snap.txt 2>&1 || { cat fsck-snap.txt; fail "e2fsck found problems in the snapshot"; }
detach fuse-snap "$slo"

umount mnt
e2fsck -fn "$lo" >fsck-origin.txt 2>&1 || { cat fsck-origin.txt; fail "e2fsck found problems in the origin"; }
mount "$lo" mnt
(cd mnt && find . -type f | sort | xargs sha256sum) > again.sums
diff after.sums again.sums || fail "the origin lost files across umount/mount"
umount mnt
detach fuse "$lo"
stop_serve
ms check store.img | grep -q clean
echo "filesystem: ok"

# The README's nbdfuse block, verbatim (it waits for nbdfuse and tears down
# in order): afterwards nothing is mounted or attached and serve still runs.
README=$(dirname "$0")/../../README.md
awk '/^A filesystem through `nbdfuse`/ {f=1} f && /^```sh/ {inblock=1; next} inblock && /^```/ {exit} inblock {print}' \
  "$README" > readme-fs.sh
grep -q "losetup -d" readme-fs.sh || fail "the README's nbdfuse block was not found"
mkdir readme && cd readme
create_store origin.img store.img --origin-size 256M >/dev/null
rm -f "$SOCK" "$MULTISNAP_CONTROL"
env -u MULTISNAP_CONTROL "$MULTISNAP" serve store.img >>"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
wait_for_socket multisnap.sock
wait_for_socket multisnap.ctl
env MULTISNAP_CONTROL=$PWD/multisnap.ctl M=$MULTISNAP U='nbd+unix:///origin?socket=multisnap.sock' \
  timeout 300 bash -c 'set -euo pipefail; source ../readme-fs.sh; wait' >readme-fs.out 2>&1 \
  || { cat readme-fs.out; fail "the README's nbdfuse block failed"; }
grep -qx -- "$(ls /etc | head -1)" readme-fs.out || { cat readme-fs.out; fail "the snapshot did not show /etc"; }
grep -q " $WORK/readme/" /proc/mounts && fail "the README's teardown left mounts: $(grep " $WORK/readme/" /proc/mounts)"
losetup -j "$WORK/readme/fuse/disk" | grep -q . && fail "the README's teardown left a loop device"
kill -0 "$SERVE_PID" || fail "serve did not survive the README's teardown"
stop_serve
cd "$WORK"
echo "filesystem (README block): ok"
