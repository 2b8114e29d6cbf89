#!/usr/bin/env bash
# One run of the million-snapshot benchmark (issues 9 and 11): a store made
# by `multisnap create` with default options (64 KiB chunks, default store
# and metadata sizes) on sparse files, `multisnap serve` in the background,
# N live snapshots created through the control socket (pipelined by a small
# python client, so no process start-up is measured), and at 1, N/10 and N
# live snapshots:
#
#   * snapshot create latency through the control socket (median and p99 of
#     200 creates, one at a time; they count toward the live snapshots);
#   * first-write cost: 4 KiB writes, each into an origin chunk holding data
#     and not written since the newest snapshot (so each needs a copy), over
#     NBD with libnbd: latency one at a time (median, p99 of 500) and IOPS
#     with 16 in flight (4,096 writes; 200 and 1,024 below 100,000);
#   * VmRSS and VmHWM of serve against the metadata cache it reports.
#
# Then at N: `multisnap snapshot list` (table and --json) wall time, the raw
# control-socket answer time, restart (SIGTERM until exit; start until the
# control socket answers and an NBD read of the newest snapshot works) and
# RSS after it; then every other snapshot deleted (pipelined, 4 control
# connections) while fio overwrites a 1 GiB region of the origin (256 MiB
# below 100,000 snapshots), and the
# time until status shows reclaim idle, with the writer's rate before,
# during the deletes and during the reclaim that follows.
#
# Prints a table of each goal, met or NOT met. One run, on whatever else the
# machine is doing: the script prints the load average before and after.
#
#   bench/million.sh [--count N] [--dir DIR] [--keep]
#
# --count 2000 is a smoke test: 15 s with --dir on tmpfs, 69 s on this
# machine's disk while other builds ran (an fdatasync took 4-6 ms: two per
# create). The default 1000000 takes about 15 minutes on tmpfs; on a disk,
# a million creates take a million commits.
# --dir puts the store there (default: a new directory under /tmp), --keep
# leaves it (and the logs) in place afterwards.
set -euo pipefail

count=1000000 dir="" keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--count N] [--dir DIR] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$count" -ge 1000 ] 2>/dev/null || { echo "million.sh: --count must be a number >= 1000" >&2; exit 2; }

src=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3  # the system python, which has libnbd's module (python3-libnbd)
for t in fio "$PY"; do command -v "$t" >/dev/null || { echo "million.sh: $t is missing (scripts/deps.sh)" >&2; exit 2; }; done
"$PY" -c 'import nbd' 2>/dev/null || { echo "million.sh: python3-libnbd is missing (scripts/deps.sh)" >&2; exit 2; }
cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$src/build-release" multisnap >/dev/null
M=$src/build-release/multisnap

if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/multisnap-million-XXXXXX); made_dir=1
elif [ -d "$dir" ]; then made_dir=""
else mkdir -p "$dir"; made_dir=1; fi
dir=$(cd "$dir" && pwd)
[ -e "$dir/store.img" ] && { echo "million.sh: $dir already holds a store" >&2; exit 2; }
ctl=$dir/ms.ctl sock=$dir/ms.sock
export MULTISNAP_CONTROL=$ctl
serve_pid="" writer_pid=""
cleanup() {
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null || true
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  if [ -z "$keep" ]; then
    rm -f "$dir"/origin.img "$dir"/store.img "$dir"/*.log "$dir"/*.log.start "$dir"/*.txt "$dir"/*.py "$dir"/ms.*
    [ -n "$made_dir" ] && rmdir "$dir" 2>/dev/null || true
  else
    echo "kept: $dir"
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- the python side
cat >"$dir/million.py" <<'PY'
import json, os, random, signal, socket, statistics, subprocess, sys, time
import nbd

def connect(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    return s, s.makefile("rb")

def call(path, req):
    s, f = connect(path)
    s.sendall((json.dumps(req) + "\n").encode()); r = json.loads(f.readline()); s.close()
    return r

def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

def live(path):
    return call(path, {"command": "status"})["status"]["snapshots"]

def pipeline(path, reqs, conns=1, window=256, progress=None):
    """Sends reqs over conns connections, up to window unanswered on each; every answer must be ok."""
    socks = [connect(path) for _ in range(conns)]
    parts = [reqs[i::conns] for i in range(conns)]
    sent = [0] * conns; got = [0] * conns; last = time.time(); total = 0
    while any(got[i] < len(parts[i]) for i in range(conns)):
        for i, (s, f) in enumerate(socks):
            if sent[i] < len(parts[i]) and sent[i] - got[i] < window // 2:
                n = min(window - (sent[i] - got[i]), len(parts[i]) - sent[i])
                s.sendall(b"".join(parts[i][sent[i]:sent[i] + n])); sent[i] += n
            if got[i] < sent[i]:
                r = json.loads(f.readline())
                if not r.get("ok"):
                    sys.exit(f"million.py: request failed: {r}")
                got[i] += 1; total += 1
        if progress and time.time() - last > 30:
            last = time.time(); print(f"   ... {progress}: {total} of {len(reqs)}", file=sys.stderr, flush=True)
    for s, f in socks: s.close()

def cmd_fill(path, target):
    """Creates snapshots until target are live."""
    n = target - live(path)
    if n > 0:
        req = (json.dumps({"command": "snapshot-create"}) + "\n").encode()
        t0 = time.perf_counter()
        pipeline(path, [req] * n, progress="creates")
        dt = time.perf_counter() - t0
        print(f"{n} {dt:.3f}")
    else:
        print("0 0")

def cmd_createlat(path, k):
    s, f = connect(path); times = []
    for _ in range(k):
        t0 = time.perf_counter()
        s.sendall(b'{"command":"snapshot-create"}\n'); r = json.loads(f.readline())
        times.append(time.perf_counter() - t0)
        assert r.get("ok"), r
    print(f"{statistics.median(times) * 1e6:.0f} {pct(times, 99) * 1e6:.0f} {r['snapshot']['id']}")

def cmd_firstwrite(uri, first_chunk, chunk, lat_n, iops_n, seed):
    """4 KiB writes into distinct chunks [first_chunk, +lat_n+iops_n), shuffled: latency one at a time, then IOPS at 16."""
    order = list(range(first_chunk, first_chunk + lat_n + iops_n)); random.Random(seed).shuffle(order)
    h = nbd.NBD(); h.connect_uri(uri)
    data = bytes([0xa5]) * 4096
    lat = []
    for c in order[:lat_n]:
        t0 = time.perf_counter(); h.pwrite(data, c * chunk); lat.append(time.perf_counter() - t0)
    buf = nbd.Buffer.from_bytearray(bytearray(data))
    rest = order[lat_n:]; done = [0]
    def cb(err):
        done[0] += 1; return 1
    t0 = time.perf_counter(); i = 0
    while done[0] < len(rest):
        while i < len(rest) and i - done[0] < 16:
            h.aio_pwrite(buf, rest[i] * chunk, completion=cb); i += 1
        h.poll(-1)
    dt = time.perf_counter() - t0
    h.shutdown()
    print(f"{statistics.median(lat) * 1e6:.0f} {pct(lat, 99) * 1e6:.0f} {len(rest) / dt:.0f}")

def cmd_rawlist(path):
    s, f = connect(path); t0 = time.perf_counter()
    s.sendall(b'{"command":"snapshot-list"}\n'); line = f.readline(); dt = time.perf_counter() - t0
    tail = line[-40:]
    assert b'"ok":true' in tail, tail
    print(f"{dt:.3f} {len(line)}")

def cmd_rss(pid):
    kb = {}
    for l in open(f"/proc/{pid}/status"):
        k, _, v = l.partition(":")
        if k in ("VmRSS", "VmHWM"): kb[k] = int(v.split()[0])
    print(f"{kb['VmRSS'] / 1024:.1f} {kb['VmHWM'] / 1024:.1f}")

def cmd_start(ctl, sock, export, log, *serve_argv):
    """Starts serve; prints its pid and the seconds until ping answers and a 4 KiB NBD read of export works."""
    for p in (ctl, sock):
        try: os.unlink(p)
        except FileNotFoundError: pass
    t0 = time.perf_counter()
    p = subprocess.Popen(serve_argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    t_ctl = None
    while True:
        if p.poll() is not None: sys.exit(f"million.py: serve exited with {p.returncode}, see {log}")
        try:
            if t_ctl is None:
                if call(ctl, {"command": "ping"}).get("ok"): t_ctl = time.perf_counter() - t0
            if t_ctl is not None:
                h = nbd.NBD(); h.connect_uri(f"nbd+unix:///{export}?socket={sock}"); h.pread(4096, 0); h.shutdown()
                break
        except (OSError, nbd.Error):
            pass
        time.sleep(0.005)
    print(f"{p.pid} {t_ctl:.3f} {time.perf_counter() - t0:.3f}")

def cmd_delete(path, conns, status_log):
    """Deletes every other live snapshot (pipelined over conns connections), then polls status until reclaim is idle."""
    s, f = connect(path)
    s.sendall(b'{"command":"snapshot-list"}\n'); r = json.loads(f.readline()); s.close()
    assert r.get("ok"), r
    ids = [x["id"] for x in r["snapshots"]][1::2]
    reqs = [(json.dumps({"command": "snapshot-delete", "snapshot": i}) + "\n").encode() for i in ids]
    t0 = time.time()
    pipeline(path, reqs, conns=conns, progress="deletes")
    t1 = time.time()
    with open(status_log, "w") as lg:
        while True:
            st = call(path, {"command": "status"})["status"]
            lg.write(f"{time.time():.3f} {st['reclaim']['active']} {st['reclaim']['progress']:.3f} {st['exceptions']}\n")
            if not st["reclaim"]["active"]: break
            time.sleep(0.05)
    t2 = time.time()
    print(f"{t0:.3f} {t1:.3f} {t2:.3f} {st['snapshots']} {st['exceptions']}")

def cmd_status(path, *keys):
    st = call(path, {"command": "status"})["status"]
    out = []
    for k in keys:
        v = st
        for part in k.split("."): v = v[part]
        out.append(str(v))
    print(" ".join(out))

def cmd_rate(log, t0, t1):
    """Mean IOPS of fio's write_iops_log (one average per 250 ms) in [t0, t1) (absolute times; the log's are ms from its start)."""
    start = float(open(log + ".start").read()); t0, t1 = float(t0), float(t1)
    xs = []
    for l in open(log):
        ms, v = l.split(",")[:2]
        t = start + int(ms) / 1000
        if t0 <= t < t1: xs.append(int(v))
    print(f"{statistics.mean(xs):.0f} {len(xs) / 4:.0f}" if xs else "0 0")  # mean IOPS, seconds covered

args = sys.argv[2:] if sys.argv[1] == "start" else [int(a) if a.lstrip("-").isdigit() else a for a in sys.argv[2:]]
globals()["cmd_" + sys.argv[1]](*args)
PY
py() { "$PY" "$dir/million.py" "$@"; }

size=4G chunk=65536
# First writes one at a time, then 16 in flight; the writer's region. Smaller
# below 100,000 snapshots, so that a smoke run on a disk stays short.
if [ "$count" -ge 100000 ]; then lat_n=500 iops_n=4096 wsize=1G; else lat_n=200 iops_n=1024 wsize=256M; fi
per_point=$((500 + 4096))                                 # chunks each point's first writes may use
mid=$((count / 10))
echo "== million.sh: $count snapshots, store in $dir; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$M" create "$dir/origin.img" "$dir/store.img" --origin-size "$size" >"$dir/create.log"
serve_args=("$M" serve "$dir/store.img" --nbd "unix:$sock" --control "$ctl" --log-level warn)
start_serve() {  # export: sets serve_pid, t_ctl (s until ping answers), t_ready (s until an NBD read of export works)
  local out
  out=$(py start "$ctl" "$sock" "$1" "$dir/serve.log" "${serve_args[@]}")
  read -r serve_pid t_ctl t_ready <<<"$out"
}
# serve is not our child (python started it), so it is a zombie until init
# reaps it, and kill -0 succeeds on a zombie: look at its state instead.
alive() { local st; st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
stop_serve() {  # sets t_stop: SIGTERM until the process has exited
  local t0; t0=$(date +%s%N)
  kill -TERM "$serve_pid"
  while alive "$serve_pid"; do sleep 0.01; done
  t_stop=$(( ($(date +%s%N) - t0) / 1000000 ))
  serve_pid=""
}
cleanup_serve() { if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; while alive "$serve_pid"; do sleep 0.05; done; fi; }
trap 'cleanup_serve; cleanup' EXIT
res() { echo "$1 $2" >>"$dir/results.txt"; }
: >"$dir/results.txt"
now() { date +%s.%N; }
secs() { "$PY" -c "print(f'{$2 - $1:.1f}')"; }

start_serve origin
U="nbd+unix:///origin?socket=$sock"
cache=$(py status "$ctl" cache.capacity_bytes)
res cache_mib $((cache >> 20))
echo "   serve pid $serve_pid; metadata cache $((cache >> 20)) MiB; filling the first 2 GiB of the $size origin"
# 60 KiB of data at the start of every 64 KiB chunk, a 4 KiB hole after it:
# the engine asks the origin file whether a chunk is a hole before copying
# it (SEEK_DATA, then SEEK_HOLE), and on tmpfs SEEK_HOLE walks the page
# cache up to the next hole, 2 GiB away in a fully written region (40 ms
# per first write; see the README). The hole keeps that walk to one chunk.
fio --name=fill --ioengine=nbd --uri="$U" --rw=write:4k --bs=60k --size=2G --iodepth=4 --buffer_pattern=0x5a \
    >"$dir/fill.log" 2>&1
sync

point=0
measure() {  # target: creates up to target - 200 live, then 200 timed creates, first writes, RSS
  local target=$1 made dt live0 c w r
  read -r made dt < <(py fill "$ctl" $((target - 200 > 1 ? target - 200 : 1)))
  [ "$made" -gt 0 ] && echo "   created $made snapshots in ${dt} s ($("$PY" -c "print(f'{$dt / $made * 1e6:.0f}')") us each, pipelined)"
  live0=$(py status "$ctl" snapshots)
  sync
  read -r c_p50 c_p99 _ < <(py createlat "$ctl" 200)
  read -r w_p50 w_p99 w_iops < <(py firstwrite "$U" $((point * per_point)) $chunk $lat_n $iops_n $point)
  read -r rss hwm < <(py rss "$serve_pid")
  echo "   at $live0-$((live0 + 200)) live: create p50 $c_p50 us p99 $c_p99 us; first write p50 $w_p50 us p99 $w_p99 us," \
       "$w_iops IOPS at 16 in flight; VmRSS $rss MiB, VmHWM $hwm MiB"
  res "p$point.live" "$live0"
  res "p$point.create_p50" "$c_p50"; res "p$point.create_p99" "$c_p99"
  res "p$point.write_p50" "$w_p50"; res "p$point.write_p99" "$w_p99"; res "p$point.write_iops" "$w_iops"
  res "p$point.rss" "$rss"; res "p$point.hwm" "$hwm"
  point=$((point + 1))
}
echo "== 1. create latency, first writes and RSS at 1, $mid and $count live snapshots"
measure 1
measure "$mid"
t_fill=$(now)
measure "$count"
live=$(py status "$ctl" snapshots)
[ "$live" = "$count" ] || { echo "million.sh: $live live snapshots, expected $count" >&2; exit 1; }

echo "== 2. snapshot list of $count"
t0=$(now); "$M" snapshot list >/dev/null; t1=$(now); res list_table "$(secs "$t0" "$t1")"
t0=$(now); "$M" snapshot list --json >/dev/null; t1=$(now); res list_json "$(secs "$t0" "$t1")"
read -r raw bytes < <(py rawlist "$ctl")
res list_raw "$raw"
echo "   table $(grep list_table "$dir/results.txt" | cut -d' ' -f2) s, --json $(grep list_json "$dir/results.txt" | cut -d' ' -f2) s;" \
     "the raw answer ($((bytes >> 20)) MiB) read off the socket in $raw s"

echo "== 3. restart at $count"
stop_serve
start_serve "snapshot/$count"
read -r rss hwm < <(py rss "$serve_pid")
res stop_ms "$t_stop"; res start_ctl "$t_ctl"; res start_ready "$t_ready"; res restart_rss "$rss"; res restart_hwm "$hwm"
echo "   stop ${t_stop} ms; start: control answers after $t_ctl s, NBD read of snapshot/$count after $t_ready s;" \
     "VmRSS $rss MiB, VmHWM $hwm MiB"

echo "== 4. delete every other snapshot while fio overwrites $wsize of the origin, until reclaim is idle"
# The writer's region is written once first, so that every write of the
# writer is an overwrite of a chunk already copied (the same work before,
# during and after the deletes).
fio --name=pre --ioengine=nbd --uri="$U" --rw=write --bs=1M --offset=1G --size="$wsize" --iodepth=4 \
    --buffer_pattern=0x3c >"$dir/prewrite.log" 2>&1
base=$(( count >= 100000 ? 10 : 4 ))
now >"$dir/w_iops.log.start"
fio --name=writer --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --offset=1G --size="$wsize" --iodepth=4 \
    --time_based --runtime=86400 --randrepeat=0 --write_iops_log="$dir/w" --log_avg_msec=250 --per_job_logs=0 \
    >"$dir/writer.log" 2>&1 & writer_pid=$!
sleep $((base + 1))
read -r d0 d1 d2 left exc < <(py delete "$ctl" 4 "$dir/reclaim.log")
sleep 3
kill -INT "$writer_pid"; wait "$writer_pid" 2>/dev/null || true; writer_pid=""
read -r r_base _ < <(py rate "$dir/w_iops.log" "$("$PY" -c "print($d0 - $base)")" "$d0")
read -r r_del n_del < <(py rate "$dir/w_iops.log" "$d0" "$d1")
read -r r_rec n_rec < <(py rate "$dir/w_iops.log" "$d1" "$d2")
res delete_s "$(secs "$d0" "$d1")"; res reclaim_s "$(secs "$d1" "$d2")"; res delete_reclaim_s "$(secs "$d0" "$d2")"
res writer_before "$r_base"; res writer_deletes "$r_del"; res writer_reclaim "$r_rec"; res left "$left"
read -r rss hwm < <(py rss "$serve_pid")
res end_rss "$rss"; res end_hwm "$hwm"
echo "   $((count - left)) deletes in $(secs "$d0" "$d1") s, then reclaim idle after $(secs "$d1" "$d2") s more;" \
     "$left snapshots and $exc exceptions left"
echo "   writer (4 KiB random overwrites, 4 in flight): $r_base IOPS before, $r_del during the deletes ($n_del s)," \
     "$r_rec during the reclaim after them ($n_rec s); VmRSS $rss MiB, VmHWM $hwm MiB"
[ "$left" = $((count - count / 2)) ] || { echo "million.sh: $left live snapshots left, expected $((count - count / 2))" >&2; exit 1; }
stop_serve
"$M" check "$dir/store.img" >"$dir/check.log" 2>&1 && check=clean || check="NOT clean (see check.log)"
echo "   check after stopping: $check"

echo "== load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$dir/results.txt" "$count" <<'PY'
import sys
r = {k: float(v) for k, v in (l.split() for l in open(sys.argv[1]) if l.strip())}
n = int(sys.argv[2])
rows = []  # (measure, value text, goal text, met or None)
live = lambda p: f"{int(r[p + '.live']):,}"
rows.append(("snapshot create p50 / p99 (us) at " + " / ".join(live(f"p{i}") for i in range(3)),
             " / ".join(f"{r[f'p{i}.create_p50']:.0f}, {r[f'p{i}.create_p99']:.0f}" for i in range(3)), "", None))
ratio = r["p2.create_p50"] / r["p0.create_p50"]
rows.append((f"snapshot create p50 at {live('p2')} vs {live('p0')}", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2))
rows.append(("first write (4 KiB, copies a chunk) p50 / p99 (us), one at a time",
             " / ".join(f"{r[f'p{i}.write_p50']:.0f}, {r[f'p{i}.write_p99']:.0f}" for i in range(3)), "", None))
ratio = r["p2.write_p50"] / r["p0.write_p50"]
rows.append((f"first-write latency p50 at {live('p2')} vs {live('p0')}", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2))
rows.append(("first-write IOPS, 16 in flight", " / ".join(f"{r[f'p{i}.write_iops']:.0f}" for i in range(3)), "", None))
ratio = r["p0.write_iops"] / r["p2.write_iops"]
rows.append((f"first-write IOPS at {live('p0')} / at {live('p2')} (x slower)", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2))
rows.append((f"`snapshot list` of {n:,} (table to /dev/null)", f"{r['list_table']:.1f} s", "< 3 s", r["list_table"] < 3))
rows.append((f"`snapshot list --json` of {n:,}", f"{r['list_json']:.1f} s", "< 3 s", r["list_json"] < 3))
rows.append(("  the raw answer off the control socket", f"{r['list_raw']:.1f} s", "", None))
rows.append((f"restart at {n:,}: stop / control answers / NBD read of the newest snapshot",
             f"{r['stop_ms'] / 1000:.2f} / {r['start_ctl']:.2f} / {r['start_ready']:.2f} s", "", None))
cache = r["cache_mib"]
for key, what in (("p2.hwm", f"VmHWM after {n:,} creates and the writes"), ("restart_hwm", "VmHWM after restart"),
                  ("end_hwm", "VmHWM after the deletes and reclaim")):
    rows.append((what + f" vs cache {cache:.0f} MiB", f"{r[key]:.1f} MiB", f"<= cache + 32 MiB", r[key] <= cache + 32))
rows.append(("VmRSS at " + " / ".join(live(f"p{i}") for i in range(3)) + " (MiB)",
             " / ".join(f"{r[f'p{i}.rss']:.1f}" for i in range(3)), "", None))
rows.append((f"delete every other ({n // 2:,}), pipelined", f"{r['delete_s']:.1f} s", "", None))
rows.append(("  then until reclaim idle", f"{r['reclaim_s']:.1f} s", "", None))
rows.append(("writer IOPS before / during deletes / during reclaim",
             f"{r['writer_before']:.0f} / {r['writer_deletes']:.0f} / {r['writer_reclaim']:.0f}", "", None))
print()
w = max(len(x[0]) for x in rows)
print(f"{'measure':<{w}}  {'value':>28}  {'goal':<18} ")
for m, v, g, met in rows:
    print(f"{m:<{w}}  {v:>28}  {g:<18} {'' if met is None else ('met' if met else 'NOT met')}")
PY
