#!/usr/bin/env bash
# Copy slots against sequential and random first writes after a snapshot:
# for each slot count given, a fresh store (64 KiB chunks), the origin
# filled, a snapshot, fio 1 MiB sequential writes over all of it (queue
# depth 4, MiB/s), another snapshot, then 4,096 4 KiB writes each into a
# chunk of its own (queue depth 16, IOPS). Run the counts alternately
# (e.g. 8 64 8 64) to see the noise.
#
# Usage: bench/copy_slots.sh [--size 512M] SLOTS...
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
size=512M
[ "${1:-}" = --size ] && { size=$2; shift 2; }
[ $# -gt 0 ] || { echo "usage: $0 [--size SIZE] SLOTS..." >&2; exit 2; }
command -v fio >/dev/null || { echo "copy_slots.sh: fio is missing" >&2; exit 2; }
cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$src/build-release" multisnap >/dev/null
M=$src/build-release/multisnap
work=$(mktemp -d /tmp/multisnap-slots-XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
chunks=$(( $(numfmt --from=iec "$size") / 65536 ))
/usr/bin/python3 - "$chunks" "$work/cow.iolog" <<'PY'
import random, sys
n, path = int(sys.argv[1]), sys.argv[2]
order = list(range(n)); random.Random(1).shuffle(order)
with open(path, "w") as f:
    f.write("fio version 2 iolog\nnbd add\nnbd open\n")
    f.writelines(f"nbd write {c * 65536} 4096\n" for c in order[:min(4096, n)])
    f.write("nbd close\n")
PY
json() { sed -n '/^{/,$p' | /usr/bin/python3 -c "import json,sys; w=json.load(sys.stdin)['jobs'][0]['write']; print(int($1))"; }
for slots in "$@"; do
  rm -f "$work"/*.img "$work"/*.sock "$work"/*.ctl
  "$M" create "$work/origin.img" "$work/store.img" --origin-size "$size" >/dev/null
  "$M" serve "$work/store.img" --nbd "unix:$work/s.sock" --control "$work/c.ctl" --log-level warn --copy-slots "$slots" &
  pid=$!
  for _ in $(seq 200); do [ -S "$work/c.ctl" ] && break; sleep 0.05; done
  export MULTISNAP_CONTROL=$work/c.ctl
  u="nbd+unix:///origin?socket=$work/s.sock"
  fio --name=fill --ioengine=nbd --uri="$u" --rw=write --bs=1M --size="$size" --iodepth=4 --buffer_pattern=0x5a >/dev/null 2>&1
  "$M" snapshot create >/dev/null
  seq=$(fio --name=seq --ioengine=nbd --uri="$u" --rw=write --bs=1M --size="$size" --iodepth=4 --output-format=json 2>/dev/null | json "w['bw']/1024")
  "$M" snapshot create >/dev/null
  cow=$(fio --name=cow --ioengine=nbd --uri="$u" --rw=randwrite --bs=4k --size="$size" --iodepth=16 \
          --read_iolog="$work/cow.iolog" --output-format=json 2>/dev/null | json "w['iops']")
  echo "copy-slots $slots: 1 MiB sequential after a snapshot ${seq} MiB/s, 4 KiB first writes ${cow} IOPS"
  kill "$pid"; wait "$pid" || true; pid=
done
