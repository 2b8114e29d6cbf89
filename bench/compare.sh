#!/usr/bin/env bash
# One command for the issue #3 comparison: runs ../shared/bench/anchors.sh
# with MULTISNAP set (nbdkit file = the ceiling, qcow2 under qemu-nbd, and
# multisnap, same fio jobs, one run), retrying it when an anchor server
# falls over (nbdkit 1.32 sometimes asserts when fio closes mid-reply), then
# times `snapshot create` as a whole command against `qemu-img snapshot -c`
# at 100 and 10,000 existing snapshots, and prints every ratio with its goal.
#
# Usage: bench/compare.sh [--size 2G] [--create-at 100,10000] [--create-size 256M] [--out DIR] [--reuse-anchors]
#   --create-size: the volume for the snapshot-create timings (qcow2's cost
#     per create grows with its allocated clusters; a small volume favours it).
#   --reuse-anchors: keep DIR/results.json from an earlier run, redo the rest
# Builds build-release/multisnap if needed. Takes about 90 minutes, most of it
# filling the qcow2 image to 10,000 snapshots: qcow2 rewrites its whole
# snapshot table (four small writes per snapshot) on every create, so the fill
# is quadratic even inside one qemu-storage-daemon. --create-at 100,1000 takes
# about 10 minutes.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
size=2G create_at=100,10000 create_size=256M out= reuse=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --create-at) create_at=$2; shift 2 ;;
    --create-size) create_size=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --reuse-anchors) reuse=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
anchors=$src/../shared/bench/anchors.sh
[ -f "$anchors" ] || { echo "compare.sh: $anchors is missing" >&2; exit 2; }
"$src/scripts/deps.sh"
command -v qemu-storage-daemon >/dev/null || {  # for qcow2_fill.py
  echo "installing qemu-system-common (qemu-storage-daemon)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-common >/dev/null
}
cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$src/build-release" multisnap >/dev/null
M=$src/build-release/multisnap
out=${out:-$(mktemp -d /tmp/multisnap-bench-XXXXXX)}
mkdir -p "$out"
PY=/usr/bin/python3

echo "== fio workloads (anchors.sh, size $size, 64K chunks/clusters)"
for attempt in 1 2 3; do
  [ -n "$reuse" ] && [ -f "$out/results.json" ] && break
  if MULTISNAP=$M bash "$anchors" --size "$size" --chunk 64K --snaps 100 --out "$out" >"$out/anchors.log" 2>&1; then
    break
  fi
  echo "   anchors.sh failed (attempt $attempt), retrying: $(grep -m1 -E 'Assert|Abort|error' "$out/anchors.log" || true)"
  [ $attempt = 3 ] && { tail -20 "$out/anchors.log"; exit 1; }
done
grep -E "^(system|ceiling|qcow2|multisnap) " "$out/anchors.log" || true

# snapshot create as a whole command, after N existing snapshots.
work=$(mktemp -d /tmp/multisnap-create-XXXXXX)
trap 'pkill -f "$work/ms.sock" 2>/dev/null || true; rm -rf "$work"' EXIT
create_times() {  # prints "N qcow2_ms multisnap_ms" per N
  local n have_q=0 have_m=0 t0 t1 q m
  qemu-img create -q -f qcow2 -o cluster_size=64K "$work/q.qcow2" "$create_size"
  local bytes gib=$((1 << 30)) off=0 args=()
  bytes=$(numfmt --from=iec "$create_size")
  while [ $off -lt "$bytes" ]; do  # qemu-io writes at most 2 GiB - 1 at once
    args+=(-c "write -P 0x5a $off $(( bytes - off < gib ? bytes - off : gib ))"); off=$((off + gib))
  done
  qemu-io -f qcow2 "${args[@]}" "$work/q.qcow2" >/dev/null
  "$M" create "$work/origin.img" "$work/store.img" --origin-size "$create_size" >/dev/null
  "$M" serve "$work/store.img" --nbd "unix:$work/ms.sock" --control "$work/ms.ctl" --log-level warn &
  local pid=$!
  for _ in $(seq 100); do [ -S "$work/ms.ctl" ] && break; sleep 0.05; done
  export MULTISNAP_CONTROL=$work/ms.ctl
  for n in ${create_at//,/ }; do
    if [ $have_q -lt "$n" ]; then  # one qemu-storage-daemon adds them all (see qcow2_fill.py)
      /usr/bin/python3 "$src/bench/qcow2_fill.py" "$work/q.qcow2" $((n - have_q)) "f$have_q-"; have_q=$n
    fi
    while [ $have_m -lt "$n" ]; do "$M" snapshot create >/dev/null; have_m=$((have_m + 1)); done
    # median of 5 for each
    q=$(for i in 1 2 3 4 5; do t0=$(date +%s%N); qemu-img snapshot -c "t$n-$i" "$work/q.qcow2"; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 )); done | sort -n | sed -n 3p)
    m=$(for i in 1 2 3 4 5; do t0=$(date +%s%N); "$M" snapshot create >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 )); done | sort -n | sed -n 3p)
    have_q=$((have_q + 5)); have_m=$((have_m + 5))
    echo "$n $q $m"
  done
  kill "$pid"; wait "$pid" || true
}
echo "== snapshot create as a whole command ($create_size volume, filled; median of 5, microseconds)"
create_times | tee "$out/create.txt"

$PY - "$out/results.json" "$out/create.txt" "$out/summary.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
def ratio(a, b):
    return r[a] / r[b] if r.get(b) else float("nan")
checks = [
    ("4k random overwrite vs ceiling", ratio("multisnap.over4k", "ceiling.over4k"), 0.9),
    ("4k random origin read vs ceiling", ratio("multisnap.read4k", "ceiling.read4k"), 0.9),
    ("4k first write after snapshot vs qcow2", ratio("multisnap.cow4k", "qcow2.cow4k"), 2.0),
    ("1M sequential write after snapshot vs qcow2", ratio("multisnap.seq1m", "qcow2.seq1m"), None),
    ("1M sequential write after snapshot vs ceiling", ratio("multisnap.seq1m", "ceiling.seq1m"), None),
]
for n, q, m in rows:
    checks.append((f"snapshot create at {n} snapshots: qemu-img time / multisnap time", int(q) / max(1, int(m)), 1.0))
print("\n%-62s %8s %8s %s" % ("ratio", "value", "goal", ""))
out = []
for name, value, goal in checks:
    met = "" if goal is None else ("met" if value >= goal else "NOT MET")
    print("%-62s %8.2f %8s %s" % (name, value, "-" if goal is None else ">= %.1f" % goal, met))
    out.append({"ratio": name, "value": value, "goal": goal})
json.dump({"anchors": r, "create_us": rows, "ratios": out}, open(sys.argv[3], "w"), indent=2)
PY
echo "results: $out/summary.json"
