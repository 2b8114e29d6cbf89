#!/usr/bin/env bash
# Real NBD clients against multisnap serve: nbdinfo (--list, --map), nbdcopy,
# qemu-img compare and qemu-io, over Unix and TCP sockets; a snapshot taken
# under load from four libnbd clients.
source "$(dirname "$0")/lib.sh"
need nbdinfo nbdcopy qemu-img qemu-io

create_store origin.img store.img --origin-size 96M --chunk-size 64K >/dev/null
start_serve --nbd tcp:127.0.0.1:0

# Every export is listed, with descriptions.
ms snapshot create --name empty >/dev/null
nbdinfo --list "nbd+unix:///?socket=$SOCK" > list.txt
grep -q 'export="origin"' list.txt || fail "origin not listed"
grep -q 'export="snapshot/1"' list.txt || fail "snapshot/1 not listed"
grep -q "description: snapshot 1 'empty' of the origin" list.txt || fail "no description"
# The default export is the origin; snapshots are reachable by ID and name.
[ "$(nbdinfo --size "nbd+unix:///?socket=$SOCK")" = $((96 << 20)) ] || fail "default export size"
[ "$(nbdinfo --size "$(uri snapshot/empty)")" = $((96 << 20)) ] || fail "by name"
! nbdinfo --size "$(uri snapshot/nosuch)" 2>/dev/null || fail "unknown export opened"

# nbdcopy round trip of random data (with holes), then a snapshot.
$PY -c '
import os, random
r = random.Random(7)
with open("a.bin", "wb") as f:
    f.truncate(96 << 20)
    for i in range(0, 96, 3):   # 1 MiB of random data every 3 MiB
        f.seek(i << 20); f.write(r.randbytes(1 << 20))
'
nbdcopy a.bin "$(uri origin)"
nbdcopy "$(uri origin)" back.bin
cmp a.bin back.bin || fail "nbdcopy round trip differs"
ms snapshot create --name a >/dev/null

# The origin moves on; the snapshot must still equal the saved copy.
qemu-io -f raw -c "write -P 0x5a 0 8M" -c "write -P 0xa5 40M 1M" "$(uri origin)" >/dev/null
qemu-img compare -f raw -F raw a.bin "$(uri snapshot/a)" | grep -q "identical" || fail "snapshot changed"
! qemu-img compare -q -f raw -F raw a.bin "$(uri origin)" || fail "origin did not change"
qemu-io -f raw -c "read -P 0x5a 0 8M" -c "read -P 0xa5 40M 1M" "$(uri origin)" | grep -q "read 1048576" \
  || fail "qemu-io pattern verify on the origin"

# Writable snapshot: qemu-io writes and verifies a pattern there; the
# origin and the other snapshot are untouched by it.
qemu-io -f raw -c "write -P 0x33 1M 3M" -c "read -P 0x33 1M 3M" "$(uri snapshot/a)" | grep -q "read 3145728" \
  || fail "qemu-io on a snapshot"
qemu-io -f raw -c "read -P 0x5a 0 8M" "$(uri origin)" | grep -q "read 8388608" || fail "origin changed by a snapshot write"
truncate -s 96M zero.bin
qemu-img compare -q -f raw -F raw zero.bin "$(uri snapshot/empty)" || fail "the first snapshot is not all zeros"

# Allocation map: the empty snapshot reads zeros where the origin was a hole.
nbdinfo --map "$(uri origin)" > map.txt
grep -q "data" map.txt || fail "map shows no data"
$PY - "$SOCK" <<'PY'
import nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri("nbd+unix:///snapshot/a?socket=" + sys.argv[1])
# A trimmed whole chunk of a snapshot reports hole+zero and reads zeros.
h.trim(65536, 10 << 20)
h.flush()
seen = []
def cb(meta, offset, entries, err):
    seen.extend(entries)
    return 0
h.block_status(65536, 10 << 20, cb)
assert seen[1] & 3 == 3, seen   # NBD_STATE_HOLE|NBD_STATE_ZERO
assert h.pread(65536, 10 << 20) == bytes(65536)
h.shutdown()
PY

# A snapshot taken while four clients write is atomic with respect to their
# writes: every write acknowledged before `snapshot create` started is in
# it, nothing issued after the command returned is, and each block holds one
# whole write.
$PY - "$SOCK" "$MULTISNAP" <<'PY'
import nbd, struct, subprocess, sys, threading, time
sock, multisnap = sys.argv[1], sys.argv[2]
BLOCK, PER_WRITER, WRITERS, BASE = 4096, 256, 4, 48 << 20
log = [[] for _ in range(WRITERS * PER_WRITER)]   # per block: (gen, issued, acked)
stop = threading.Event()
def writer(w):
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///origin?socket={sock}")
    gen = 0
    while not stop.is_set():
        gen += 1
        for j in range(PER_WRITER):
            b = w * PER_WRITER + j
            issued = time.monotonic()
            h.pwrite(struct.pack("<QQ", b, gen) * (BLOCK // 16), BASE + b * BLOCK)
            log[b].append((gen, issued, time.monotonic()))
    h.shutdown()
def wait_until(what, cond):  # the writers' pace depends on the machine's load
    deadline = time.monotonic() + 120
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(WRITERS)]
for t in threads: t.start()
# Every block written at least once before the create (until then a block
# still holds a.bin's data, which the checks below do not expect).
wait_until("every block was written", lambda: all(log))
time.sleep(0.1)
start = time.monotonic()
sid = subprocess.run([multisnap, "snapshot", "create", "--name", "under-load"], check=True,
                     capture_output=True, text=True).stdout.strip()
end = time.monotonic()
wait_until("every block was written after the create", lambda: all(l[-1][1] > end for l in log))
stop.set()
for t in threads: t.join()
h = nbd.NBD()
h.connect_uri(f"nbd+unix:///snapshot/{sid}?socket={sock}")
data = h.pread(WRITERS * PER_WRITER * BLOCK, BASE)
before = after = 0
for b in range(WRITERS * PER_WRITER):
    blk = data[b * BLOCK:(b + 1) * BLOCK]
    if blk != blk[:16] * (BLOCK // 16):
        runs = []  # (byte offset, (block, gen), 16-byte slots) of each run of equal slots
        for k in range(0, BLOCK, 16):
            v = struct.unpack("<QQ", blk[k:k + 16])
            if runs and runs[-1][1] == v: runs[-1][2] += 1
            else: runs.append([k, v, 1])
        near = [(g, round(i - start, 4), round(a - start, 4)) for g, i, a in log[b] if abs(i - start) < 1 or abs(a - end) < 1]
        raise AssertionError(f"block {b} is torn: {runs[:6]}; create from 0 to {end - start:.4f} s; "
                             f"writes (gen, issued, acked) near it: {near[:12]}")
    bb, gen = struct.unpack("<QQ", blk[:16])
    acked_before = [g for g, i, a in log[b] if a < start]
    issued_after = [g for g, i, a in log[b] if i > end]
    if acked_before:
        assert bb == b and gen >= max(acked_before), f"block {b}: gen {gen}, but gen {max(acked_before)} was acknowledged before the create"
    if issued_after:
        assert gen < min(issued_after), f"block {b}: gen {gen} was written after the create returned"
    before += bool(acked_before); after += bool(issued_after)
assert before == len(log) and after == len(log), (before, after)
h.shutdown()
PY

# TCP works too (the port was chosen by the kernel).
port=$(ms status --json | $PY -c 'import json,sys; print([a for a in json.load(sys.stdin)["nbd"]["listen"] if a.startswith("tcp:")][0].rsplit(":",1)[1])')
[ "$(nbdinfo --size "nbd://127.0.0.1:$port/origin")" = $((96 << 20)) ] || fail "TCP"

stop_serve
ms check store.img | grep -q clean
echo "clients: ok"
