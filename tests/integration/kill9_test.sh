#!/usr/bin/env bash
# kill -9 of multisnap serve under fio write load with periodic flushes, and a
# writer that logs what it flushed and which snapshots it took. After the
# restart: check is clean, everything flushed before the kill is intact,
# and every snapshot is exactly what it was when taken.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
need fio
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
fio --enghelp=nbd >/dev/null 2>&1 || skip "this fio has no nbd engine"

create_store origin.img store.img --origin-size 64M --chunk-size 64K --store-size 2G >/dev/null
for round in 1 2; do
  start_serve --cache-size 2M
  ms snapshot create >/dev/null  # so that fio's writes need copies
  fio --name=load --ioengine=nbd --uri="$(uri origin)" --rw=randwrite --bs=4k --size=32M --iodepth=8 \
      --time_based --runtime=60 --fsync=32 --randrepeat=0 --output=fio-$round.out >/dev/null 2>&1 &
  fio_pid=$!
  $PY "$HERE/kill9_writer.py" write "$(uri origin)" writer.log "$MULTISNAP" 2>writer.err &
  writer_pid=$!
  sleep $((2 + round))
  kill -KILL "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=
  wait $fio_pid 2>/dev/null || true
  wait $writer_pid 2>/dev/null || true
  grep -q flushed writer.log || fail "the writer made no progress: $(cat writer.err)"
  ms check store.img > check-$round.txt || { cat check-$round.txt; fail "check after kill -9 (round $round)"; }
  start_serve
  $PY "$HERE/kill9_writer.py" verify "$(uri EXPORT)" writer.log || fail "data lost in round $round"
  stop_serve
  rm -f writer.log
done
ms check store.img | grep -q clean
echo "kill9: ok"
