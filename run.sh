#!/usr/bin/env bash
# The main job: builds multisnap (Release), creates a store on sparse files
# in the current directory (origin.img, store.img) unless one is there, and
# serves the origin and every snapshot over NBD until Ctrl-C.
#   ORIGIN_SIZE=10G ./run.sh          (size of a new origin, default 10G)
#   PORT=10810 ./run.sh               (TCP port on 127.0.0.1, default 10809)
#   MULTISNAP_BIN=/path/to/multisnap ./run.sh   (use that binary: no deps, no build)
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
port=${PORT:-10809}
if [ -n "${MULTISNAP_BIN:-}" ]; then
  M=$MULTISNAP_BIN
else
  "$src/scripts/deps.sh"
  cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C "$src/build-release" multisnap >/dev/null
  M="$src/build-release/multisnap"
fi
if [ ! -e store.img ]; then
  "$M" create origin.img store.img --origin-size "${ORIGIN_SIZE:-10G}"
elif [ -n "${ORIGIN_SIZE:-}" ]; then
  echo "note: store.img already exists, so ORIGIN_SIZE=$ORIGIN_SIZE is ignored: it is served with the origin" \
       "it was created with ($(stat -L -c %s origin.img 2>/dev/null || echo '?') bytes)." \
       "To start over with another size, remove origin.img and store.img first." >&2
fi
here=$PWD
"$M" serve store.img --nbd "unix:$here/multisnap.sock" --nbd "tcp:127.0.0.1:$port" \
  --control "$here/multisnap.ctl" &
pid=$!
# Ctrl-C reaches serve as SIGTERM (a background job of a script ignores
# SIGINT): it drains, commits and exits 0.
trap 'kill -TERM $pid 2>/dev/null || true' INT TERM
# The banner only once serve answers on its control socket (it listens on
# NBD before that).
until "$M" status --control "$here/multisnap.ctl" >/dev/null 2>&1; do
  if ! kill -0 $pid 2>/dev/null; then
    rc=0
    wait $pid || rc=$?
    echo "run.sh: serve exited ($rc) before it was ready; if 127.0.0.1:$port is taken, pick another port:" \
         "PORT=10810 $0" >&2
    exit 1
  fi
  sleep 0.1
done
cat <<MSG

multisnap is serving $here/store.img. In another terminal:
  export MULTISNAP_CONTROL=$here/multisnap.ctl
  $M snapshot create --name first      # prints the new ID
  $M snapshot list
  $M status
  nbdinfo --list 'nbd+unix:///?socket=$here/multisnap.sock'
  nbdcopy 'nbd+unix:///snapshot/first?socket=$here/multisnap.sock' first.img
  qemu-io -f raw -c 'write -P 0x55 0 1M' 'nbd://127.0.0.1:$port/origin'
Ctrl-C stops it cleanly (in-flight requests finish, everything is committed).

MSG
rc=0
while :; do
  wait $pid && rc=0 || rc=$?
  kill -0 $pid 2>/dev/null || break
done
exit $rc
