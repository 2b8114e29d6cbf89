#!/usr/bin/env bash
# The performance comparison of issue #9, in one command and one run:
#  1. ../shared/bench/anchors.sh with MULTISNAP set: the NBD ceiling (the
#     faster of nbdkit file and qemu-nbd raw, per workload), qcow2 under
#     qemu-nbd, and multisnap, with the same fio jobs (retried when an anchor
#     server falls over: nbdkit 1.32 sometimes asserts when fio closes
#     mid-reply);
#  2. zeroing a never-written volume after a snapshot (discard and
#     write-zeroes): time and image growth, qcow2 against multisnap;
#  3. one NBD connection against four (fio numjobs=4, a connection each):
#     overwrites and reads of the origin and reads of a snapshot; then
#     overwrites again with the origin on a loop device (as root, with
#     losetup): a file system takes one file's lock for every buffered
#     write to it, a block device does not; and, for reference, the same
#     overwrites and reads served by nbdkit's file plugin;
#  4. the first-write cost and `snapshot create` with 1 live snapshot and
#     with --many live snapshots (10^5 by default; 10^6 takes about ten
#     minutes more);
#  5. `snapshot create` as a whole command against `qemu-img snapshot -c`
#     at --create-at existing snapshots;
# then prints every row of the goal table with its ratio and goal, writes
# summary.json and draws chart.png (gnuplot): multisnap and qcow2 against
# the ceiling, per workload.
#
# Usage: bench/compare.sh [--size 2G] [--chunk 64K] [--many 100000]
#          [--create-at 100,1000] [--create-size 256M] [--out DIR] [--reuse-anchors]
#   --reuse-anchors: keep DIR/results.json from an earlier run, redo the rest
# Builds build-release/multisnap if needed. About 15 minutes with the
# defaults on 2 cores. --create-at 100,10000 adds about 85 minutes: qcow2
# rewrites its whole snapshot table on every create, so filling an image to
# 10,000 snapshots is quadratic (bench/qcow2_fill.py).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
size=2G chunk=64K many=100000 create_at=100,1000 create_size=256M out= reuse=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --chunk) chunk=$2; shift 2 ;;
    --many) many=$2; shift 2 ;;
    --create-at) create_at=$2; shift 2 ;;
    --create-size) create_size=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --reuse-anchors) reuse=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
anchors=$src/../shared/bench/anchors.sh
[ -f "$anchors" ] || { echo "compare.sh: $anchors is missing" >&2; exit 2; }
"$src/scripts/deps.sh"
need_pkg() {  # command package
  command -v "$1" >/dev/null && return 0
  echo "installing $2 ($1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
need_pkg qemu-storage-daemon qemu-system-common  # for qcow2_fill.py
need_pkg gnuplot gnuplot-nox                     # for the chart
cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$src/build-release" multisnap >/dev/null
M=$src/build-release/multisnap
out=${out:-$(mktemp -d /tmp/multisnap-bench-XXXXXX)}
mkdir -p "$out"
PY=/usr/bin/python3
work=$(mktemp -d /tmp/multisnap-compare-XXXXXX)
pids=()
loop=
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; sleep 0.3
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }
stop_last() { kill "${pids[-1]}" 2>/dev/null; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }
ms_serve() {  # store sock ctl
  "$M" serve "$1" --nbd "unix:$2" --control "$3" --log-level warn & pids+=($!)
  wait_sock "$2"; wait_sock "$3"
}

echo "== 1. fio workloads (anchors.sh, size $size, $chunk chunks/clusters)"
for attempt in 1 2 3; do
  [ -n "$reuse" ] && [ -f "$out/results.json" ] && break
  if MULTISNAP=$M bash "$anchors" --size "$size" --chunk "$chunk" --snaps 100 --out "$out" >"$out/anchors.log" 2>&1; then
    break
  fi
  echo "   anchors.sh failed (attempt $attempt), retrying: $(grep -m1 -E 'Assert|Abort|error' "$out/anchors.log" || true)"
  [ $attempt = 3 ] && { tail -20 "$out/anchors.log"; exit 1; }
done
grep -E "^(system|ceiling|qcow2|multisnap)" "$out/anchors.log" || true

echo "== 2. zeroing a never-written $size volume after a snapshot (ms, MiB the image grew)"
zero_whole() {  # uri image op(discard|write -z): "ms grew_MiB"
  local bytes off=0 gib=$((1 << 30)) args=() b0 b1 t0 t1
  bytes=$(numfmt --from=iec "$size")
  while [ $off -lt "$bytes" ]; do  # qemu-io takes at most 2 GiB - 1 per request
    args+=(-c "$3 $off $(( bytes - off < gib ? bytes - off : gib ))"); off=$((off + gib))
  done
  b0=$(du -k "$2" | cut -f1); t0=$(date +%s%N)
  qemu-io -f raw "${args[@]}" "$1" >/dev/null
  t1=$(date +%s%N); b1=$(du -k "$2" | cut -f1)
  echo "$(( (t1 - t0) / 1000000 )) $(( (b1 - b0) / 1024 ))"
}
: >"$out/zero.txt"
for op in discard "write -z"; do
  qemu-img create -q -f qcow2 -o cluster_size="$chunk" "$work/z.qcow2" "$size"
  qemu-img snapshot -c fresh "$work/z.qcow2"
  qemu-nbd -f qcow2 -k "$work/z.sock" --persistent --discard=unmap "$work/z.qcow2" & pids+=($!)
  wait_sock "$work/z.sock"
  q=$(zero_whole "nbd+unix:///?socket=$work/z.sock" "$work/z.qcow2" "$op")
  stop_last; rm -f "$work/z.qcow2" "$work/z.sock"
  "$M" create "$work/z-origin.img" "$work/z-store.img" --origin-size "$size" --chunk-size "$chunk" >/dev/null
  ms_serve "$work/z-store.img" "$work/z.sock" "$work/z.ctl"
  MULTISNAP_CONTROL=$work/z.ctl "$M" snapshot create >/dev/null
  m=$(zero_whole "nbd+unix:///origin?socket=$work/z.sock" "$work/z-store.img" "$op")
  stop_last; rm -f "$work"/z-*.img "$work/z.sock" "$work/z.ctl"
  echo "${op/ /_} $q $m" | tee -a "$out/zero.txt"
done

echo "== 3. one connection against four (fio numjobs, IOPS; origin filled, one snapshot, every chunk copied)"
fio_jobs() {  # uri rw jobs
  fio --name=c --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --size="$size" --iodepth=16 --numjobs="$3" \
      --group_reporting --time_based --runtime=8 --randrepeat=0 --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' |
    $PY -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="write" if j["write"]["io_bytes"] else "read"; print(int(j[k]["iops"]))'
}
"$M" create "$work/c-origin.img" "$work/c-store.img" --origin-size "$size" --chunk-size "$chunk" >/dev/null
ms_serve "$work/c-store.img" "$work/c.sock" "$work/c.ctl"
export MULTISNAP_CONTROL=$work/c.ctl
fio --name=fill --ioengine=nbd --uri="nbd+unix:///origin?socket=$work/c.sock" --rw=write --bs=1M --size="$size" \
    --iodepth=4 --buffer_pattern=0x5a >/dev/null 2>&1
sid=$("$M" snapshot create)
sid=${sid##* }
fio --name=copy --ioengine=nbd --uri="nbd+unix:///origin?socket=$work/c.sock" --rw=write --bs=1M --size="$size" \
    --iodepth=4 --buffer_pattern=0xa5 >/dev/null 2>&1
: >"$out/conns.txt"
for w in "over4k origin randwrite" "read4k origin randread" "snapread4k snapshot/$sid randread"; do
  set -- $w
  one=$(fio_jobs "nbd+unix:///$2?socket=$work/c.sock" "$3" 1)
  four=$(fio_jobs "nbd+unix:///$2?socket=$work/c.sock" "$3" 4)
  echo "$1 $one $four" | tee -a "$out/conns.txt"
done
stop_last; unset MULTISNAP_CONTROL
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null && loop=$(losetup -f --show "$work/c-origin.img" 2>/dev/null); then
  # The same store, its origin now the loop device (serve warns that it is
  # not the file the store was made with; it holds the same bytes).
  "$M" serve "$work/c-store.img" --origin "$loop" --nbd "unix:$work/c.sock" --control "$work/c.ctl" \
      --log-level warn & pids+=($!)
  wait_sock "$work/c.sock"; wait_sock "$work/c.ctl"
  one=$(fio_jobs "nbd+unix:///origin?socket=$work/c.sock" randwrite 1)
  four=$(fio_jobs "nbd+unix:///origin?socket=$work/c.sock" randwrite 4)
  echo "over4k-loop-device-origin $one $four" | tee -a "$out/conns.txt"
  stop_last; losetup -d "$loop"; loop=
else
  echo "(skipped: overwrites with the origin on a loop device need root and losetup)"
fi
# The same two workloads against the ceiling's nbdkit (file plugin) on the
# same origin file: how far four connections go on this machine when the
# server is not ours (fio and the server share the cores). Reference rows,
# no goal; "-" where nbdkit fell over (see anchors.sh).
: >"$out/conns_reference.txt"
for w in "over4k randwrite" "read4k randread"; do
  set -- $w
  nbdkit -f -U "$work/k.sock" file "$work/c-origin.img" & pids+=($!)
  wait_sock "$work/k.sock"
  one=$(fio_jobs "nbd+unix:///?socket=$work/k.sock" "$2" 1 || echo -)
  four=$(fio_jobs "nbd+unix:///?socket=$work/k.sock" "$2" 4 || echo -)
  stop_last; rm -f "$work/k.sock"
  echo "$1-nbdkit-file ${one:--} ${four:--}" | tee -a "$out/conns_reference.txt"
done
rm -f "$work"/c-*.img

echo "== 4. first writes and snapshot create with 1 and with $many live snapshots"
# First-write cost: fio's cow4k job (4 KiB writes, each into a chunk not
# written since the newest snapshot) for 5 s; create: median of 9, through
# the control socket (a python client, no process start-up in the figure).
"$M" create "$work/n-origin.img" "$work/n-store.img" --origin-size "$size" --chunk-size "$chunk" >/dev/null
ms_serve "$work/n-store.img" "$work/n.sock" "$work/n.ctl"
fio --name=fill --ioengine=nbd --uri="nbd+unix:///origin?socket=$work/n.sock" --rw=write --bs=1M --size="$size" \
    --iodepth=4 --buffer_pattern=0x5a >/dev/null 2>&1
many_point() {  # prints "live_snapshots create_us first_write_iops"
  $PY - "$work/n.ctl" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def call(req):
    f.write(json.dumps(req) + "\n"); f.flush()
    r = json.loads(f.readline())
    assert r.get("ok"), r
    return r
times = []
for _ in range(9):
    t0 = time.perf_counter(); call({"command": "snapshot-create"}); times.append(time.perf_counter() - t0)
print(int(sorted(times)[4] * 1e6))
PY
}
: >"$out/many.txt"
# Two sets of 8,192 4 KiB writes (fewer on a small volume), each into a chunk
# of its own, in a shuffled order: after a create every one is a first write
# (the anchors' cow4k job, shorter).
$PY - "$(( $(numfmt --from=iec "$size") / $(numfmt --from=iec "$chunk") ))" "$(numfmt --from=iec "$chunk")" "$work" <<'PY'
import random, sys
n, chunk, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
order = list(range(n)); random.Random(2).shuffle(order)
per = min(8192, n // 2)
for part in (0, 1):
    with open(f"{d}/cow{part}.iolog", "w") as f:
        f.write("fio version 2 iolog\nnbd add\nnbd open\n")
        f.writelines(f"nbd write {c * chunk} 4096\n" for c in order[part * per:(part + 1) * per])
        f.write("nbd close\n")
PY
cow_iops() {  # part
  fio --name=cow --ioengine=nbd --uri="nbd+unix:///origin?socket=$work/n.sock" --rw=randwrite --bs=4k \
      --size="$size" --iodepth=16 --read_iolog="$work/cow$1.iolog" --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | $PY -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
sync; c1=$(many_point); w1=$(cow_iops 0)  # sync: the fill's dirty pages would slow the first point's fdatasyncs
echo "10 $c1 $w1" | tee -a "$out/many.txt"
$PY - "$work/n.ctl" "$many" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
have = 10
while have < int(sys.argv[2]) - 10:
    f.write(json.dumps({"command": "snapshot-create"}) + "\n"); f.flush()
    r = json.loads(f.readline()); assert r.get("ok"), r
    have += 1
PY
sync; cn=$(many_point); wn=$(cow_iops 1)
echo "$many $cn $wn" | tee -a "$out/many.txt"
stop_last; rm -f "$work"/n-*.img

echo "== 5. snapshot create as a whole command ($create_size volume, filled; median of 5, microseconds)"
create_times() {  # prints "N qcow2_us multisnap_us" per N
  local n have_q=0 have_m=0 t0 t1 q m
  qemu-img create -q -f qcow2 -o cluster_size=64K "$work/q.qcow2" "$create_size"
  local bytes gib=$((1 << 30)) off=0 args=()
  bytes=$(numfmt --from=iec "$create_size")
  while [ $off -lt "$bytes" ]; do  # qemu-io writes at most 2 GiB - 1 at once
    args+=(-c "write -P 0x5a $off $(( bytes - off < gib ? bytes - off : gib ))"); off=$((off + gib))
  done
  qemu-io -f qcow2 "${args[@]}" "$work/q.qcow2" >/dev/null
  "$M" create "$work/origin.img" "$work/store.img" --origin-size "$create_size" >/dev/null
  ms_serve "$work/store.img" "$work/ms.sock" "$work/ms.ctl"
  export MULTISNAP_CONTROL=$work/ms.ctl
  for n in ${create_at//,/ }; do
    if [ $have_q -lt "$n" ]; then  # one qemu-storage-daemon adds them all (see qcow2_fill.py)
      $PY "$src/bench/qcow2_fill.py" "$work/q.qcow2" $((n - have_q)) "f$have_q-"; have_q=$n
    fi
    while [ $have_m -lt "$n" ]; do "$M" snapshot create >/dev/null; have_m=$((have_m + 1)); done
    q=$(for i in 1 2 3 4 5; do t0=$(date +%s%N); qemu-img snapshot -c "t$n-$i" "$work/q.qcow2"; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 )); done | sort -n | sed -n 3p)
    m=$(for i in 1 2 3 4 5; do t0=$(date +%s%N); "$M" snapshot create >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 )); done | sort -n | sed -n 3p)
    have_q=$((have_q + 5)); have_m=$((have_m + 5))
    echo "$n $q $m"
  done
  stop_last; unset MULTISNAP_CONTROL
}
create_times | tee "$out/create.txt"

$PY - "$out" <<'PY'
import json, math, os, sys
d = sys.argv[1]
r = json.load(open(os.path.join(d, "results.json")))
rows = lambda name: [l.split() for l in open(os.path.join(d, name)) if l.strip()]
zero, conns, many, create = rows("zero.txt"), rows("conns.txt"), rows("many.txt"), rows("create.txt")
def ratio(a, b):
    return r[a] / r[b] if r.get(b) else float("nan")
checks = []  # (row, value, goal, kind): kind ">=" (value >= goal) or "<=" (value <= goal)
for op, qms, qmib, mms, mmib in zero:
    checks.append((f"{op} of a never-written volume after a snapshot: time vs qcow2 (x slower)",
                   int(mms) / max(1, int(qms)), 10.0, "<="))
    checks.append((f"{op}: store growth (MiB; metadata only)", float(mmib), 16.0, "<="))
checks += [
    ("4 KiB first write after a snapshot vs qcow2", ratio("multisnap.cow4k", "qcow2.cow4k"), 5.0, ">="),
    ("1 MiB sequential write after a snapshot vs qcow2", ratio("multisnap.seq1m", "qcow2.seq1m"), 2.0, ">="),
    ("1 MiB sequential write after a snapshot vs ceiling", ratio("multisnap.seq1m", "ceiling.seq1m"), 0.25, ">="),
    ("4 KiB snapshot read (chunks in the store) vs ceiling", ratio("multisnap.snapread4k", "ceiling.snapread4k"), 0.9, ">="),
    ("4 KiB overwrite vs qcow2", ratio("multisnap.over4k", "qcow2.over4k"), 1.0, ">="),
    ("4 KiB overwrite vs ceiling", ratio("multisnap.over4k", "ceiling.over4k"), 0.9, ">="),
    ("4 KiB origin read vs ceiling", ratio("multisnap.read4k", "ceiling.read4k"), 0.9, ">="),
]
for w, one, four in conns:
    checks.append((f"{w}: 4 connections vs 1", int(four) / max(1, int(one)), 1.5, ">="))
reference = rows("conns_reference.txt")
for w, one, four in reference:
    ok = one.isdigit() and four.isdigit()
    checks.append((f"{w}: 4 connections vs 1 (reference, not ours)",
                   int(four) / max(1, int(one)) if ok else float("nan"), None, "info"))
(n1, c1, w1), (nn, cn, wn) = many
checks.append((f"snapshot create at {nn} vs {n1} live snapshots (x slower)", int(cn) / max(1, int(c1)), 1.2, "<="))
checks.append((f"first-write IOPS at {n1} vs {nn} live snapshots (x slower)", int(w1) / max(1, int(wn)), 1.2, "<="))
for n, q, m in create:
    checks.append((f"snapshot create (whole command) at {n} snapshots: qemu-img time / multisnap time",
                   int(q) / max(1, int(m)), 1.0, ">="))
print("\n%-92s %9s %8s %s" % ("row", "value", "goal", ""))
out = []
for name, value, goal, kind in checks:
    if kind == "info":
        print("%-92s %9.2f %8s" % (name, value, "-"))
        out.append({"row": name, "value": value if not math.isnan(value) else None, "goal": None, "kind": kind})
        continue
    met = (value >= goal) if kind == ">=" else (value <= goal)
    print("%-92s %9.2f %8s %s" % (name, value, f"{kind} {goal:g}", "met" if met else "NOT MET"))
    out.append({"row": name, "value": value if not math.isnan(value) else None, "goal": goal, "kind": kind, "met": met})
json.dump({"anchors": r, "zero": zero, "connections": conns, "connections_reference": reference, "many": many,
           "create_us": create, "rows": out},
          open(os.path.join(d, "summary.json"), "w"), indent=2)
# The chart: every fio workload against its ceiling (1.0 = the ceiling).
with open(os.path.join(d, "chart.dat"), "w") as f:
    for key, label in [("cow4k", "4K first write"), ("over4k", "4K overwrite"), ("read4k", "4K origin read"),
                       ("snapread4k", "4K snapshot read"), ("seq1m", "1M seq. write")]:
        c = r.get(f"ceiling.{key}") or 0
        if not c:
            continue
        f.write('"%s" 1.0 %.3f %.3f\n' % (label, r.get(f"qcow2.{key}", 0) / c, r.get(f"multisnap.{key}", 0) / c))
PY
gnuplot <<EOF
set terminal pngcairo size 900,500 font "sans,10"
set output "$out/chart.png"
set title "multisnap vs qcow2 vs the NBD ceiling (fio over NBD, $size, $chunk chunks; 1.0 = ceiling)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set yrange [0:*]
set grid ytics
set key outside top center horizontal
set ylabel "throughput relative to the ceiling"
plot "$out/chart.dat" using 2:xtic(1) title "ceiling (nbdkit/qemu-nbd raw)", '' using 3 title "qcow2 + qemu-nbd", '' using 4 title "multisnap"
EOF
echo "results: $out/summary.json, chart: $out/chart.png"
