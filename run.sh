#!/usr/bin/env bash
# The main job: builds multisnap (Release), creates a store on sparse files
# in the current directory (origin.img, store.img) unless one is there, and
# serves the origin and every snapshot over NBD until Ctrl-C.
#   ORIGIN_SIZE=10G ./run.sh          (size of a new origin, default 10G)
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
"$src/scripts/deps.sh"
cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$src/build-release" multisnap >/dev/null
M="$src/build-release/multisnap"
if [ ! -e store.img ]; then
  "$M" create origin.img store.img --origin-size "${ORIGIN_SIZE:-10G}"
fi
here=$PWD
cat <<MSG

multisnap is serving $here/store.img. In another terminal:
  export MULTISNAP_CONTROL=$here/multisnap.ctl
  $M snapshot create --name first      # prints the new ID
  $M snapshot list
  $M status
  nbdinfo --list 'nbd+unix:///?socket=$here/multisnap.sock'
  nbdcopy 'nbd+unix:///snapshot/first?socket=$here/multisnap.sock' first.img
  qemu-io -f raw -c 'write -P 0x55 0 1M' 'nbd://127.0.0.1:10809/origin'
Ctrl-C stops it cleanly (in-flight requests finish, everything is committed).

MSG
exec "$M" serve store.img --nbd "unix:$here/multisnap.sock" --nbd tcp:127.0.0.1:10809 \
  --control "$here/multisnap.ctl"
