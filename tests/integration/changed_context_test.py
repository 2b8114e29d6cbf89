#!/usr/bin/python3
"""The NBD meta context multisnap:changed:<BASE> against a model.

Random writes, trims and zeroes go to the origin and to snapshots through
NBD; snapshots are created (clones too, for the range store) and deleted.
The test remembers when each chunk was last written by anyone. After every
round it maps several exports against several bases (by ID and by name),
with libnbd's block_status (whole maps in random request sizes, and
REQ_ONE), and checks, chunk by chunk:
  * the flag is the same over the whole chunk (the granularity is the chunk);
  * where the export and BASE read differently, the chunk is reported changed;
  * a chunk nobody wrote since the older of the two was created (for a clone,
    since its parent was) is reported unchanged.
Also: the reply names each context as asked, a BASE that does not exist
selects nothing, LIST shows the family, and `nbdinfo --map` prints the map.

usage: changed_context_test.py MULTISNAP WORKDIR FORMAT
MULTISNAP_SEED=n replays a run; MULTISNAP_SOAK=n makes it n times longer.
"""
import json
import os
import random
import re
import subprocess
import sys
import time

import nbd

MS, WORK, FORMAT = sys.argv[1], sys.argv[2], sys.argv[3]
SEED = int(os.environ.get("MULTISNAP_SEED", random.randrange(1 << 30)))
SOAK = int(os.environ.get("MULTISNAP_SOAK", "1"))
rng = random.Random(SEED)
CHUNK = rng.choice([4096, 16384, 65536])
SIZE = rng.choice([8 << 20, (8 << 20) + 3 * CHUNK // 2 if CHUNK > 4096 else (8 << 20) + 4096])
print(f"changed_context_test: seed {SEED} (MULTISNAP_SEED={SEED} replays), {FORMAT} store, "
      f"chunk {CHUNK}, size {SIZE}", flush=True)
STORE, SOCK, CTL = f"{WORK}/store.img", f"{WORK}/nbd.sock", f"{WORK}/ctl"
NCHUNKS = (SIZE + CHUNK - 1) // CHUNK


def fail(msg):
    print(f"FAILED (seed {SEED}): {msg}", flush=True)
    sys.exit(1)


def ms(*args, ok=True):
    p = subprocess.run([MS, *args, *(["--control", CTL] if args[0] in ("snapshot", "status") else [])],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if ok and p.returncode != 0:
        fail(f"multisnap {' '.join(args)}: {p.stderr.decode()}")
    return p


def uri(export):
    return f"nbd+unix:///{export}?socket={SOCK}"


class Volume:
    def __init__(self, export, sid=None, name=None, birth=None, clone=False):
        self.export, self.id, self.name = export, sid, name
        self.birth = birth  # when its contents were fixed (a clone: its parent's); None: the origin
        self.clone = clone


clock = 0
last_write = {}  # chunk -> clock of the newest write of it, by anyone


def tick():
    global clock
    clock += 1
    return clock


def write_random(vol, writes):
    h = nbd.NBD()
    h.connect_uri(uri(vol.export))
    for _ in range(writes):
        length = rng.choice([512, 4096, CHUNK, 3 * CHUNK + 1000, 100000])
        length = min(length, SIZE)
        off = rng.randrange(0, SIZE - length + 1)
        kind = rng.random()
        if kind < 0.1:
            h.zero(length, off)
        elif kind < 0.15:
            h.trim(length, off)
        else:
            h.pwrite(rng.randbytes(length) if rng.random() < 0.8 else bytes([rng.randrange(256)]) * length, off)
        t = tick()
        for c in range(off // CHUNK, (off + length - 1) // CHUNK + 1):
            last_write[c] = t
    h.flush()
    h.shutdown()


def read_chunks(vol):
    h = nbd.NBD()
    h.connect_uri(uri(vol.export))
    data = h.pread(SIZE, 0)
    h.shutdown()
    return [data[c * CHUNK:(c + 1) * CHUNK] for c in range(NCHUNKS)]


def base_key(base):
    """How the context names BASE this time: its ID or its name."""
    return base.name if rng.random() < 0.5 else str(base.id)


def collect(h, contexts, offset, length, flags=0):
    """One block_status call: {context: [(offset, length, flags)...]}."""
    got = {}

    def cb(context, off, entries, err):
        if context in got:
            fail(f"two chunks for {context}")
        ext, pos = [], off
        for i in range(0, len(entries), 2):
            ext.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
        got[context] = ext
        return 0
    h.block_status(length, offset, cb, flags)
    for c in contexts:
        if c not in got:
            fail(f"block_status at {offset}+{length}: no chunk for {c} (got {list(got)})")
    return got


def full_maps(h, contexts):
    """Maps of the whole export for every context, asked in random pieces."""
    maps = {c: [] for c in contexts}
    pos = 0
    while pos < SIZE:
        length = min(SIZE - pos, rng.choice([SIZE, CHUNK, 3 * CHUNK + 512, 1 << 20, 777]))
        got = collect(h, contexts, pos, length)
        # Every context covers at least the first byte; go on from the shortest.
        reach = min(ext[-1][0] + ext[-1][1] for ext in got.values())
        reach = min(reach, pos + length)
        for c, ext in got.items():
            if ext[0][0] != pos:
                fail(f"{c}: block_status at {pos} answered from {ext[0][0]}")
            for (o, n, f) in ext:
                lo, hi = max(o, maps_end(maps[c])), min(o + n, reach)
                if lo < hi:
                    maps[c].append((lo, hi - lo, f))
        if reach <= pos:
            fail(f"block_status at {pos} made no progress")
        pos = reach
    return maps


def maps_end(m):
    return m[-1][0] + m[-1][1] if m else 0


def per_chunk(extents, what):
    """The flag of each chunk; fails if one chunk has two."""
    flags = [None] * NCHUNKS
    pos = 0
    for (o, n, f) in extents:
        if o != pos:
            fail(f"{what}: extent at {o}, expected {pos}")
        if f not in (0, 1):
            fail(f"{what}: flags {f}")
        for c in range(o // CHUNK, (o + n - 1) // CHUNK + 1):
            if flags[c] is not None and flags[c] != f:
                fail(f"{what}: chunk {c} is reported both changed and unchanged")
            flags[c] = f
        pos = o + n
    if pos != SIZE:
        fail(f"{what}: the map ends at {pos}, not {SIZE}")
    return flags


def check_pair(export, bases, contents):
    """Maps `export` against every base in `bases` on one connection."""
    names = {}
    for b in bases:
        names[f"multisnap:changed:{base_key(b)}"] = b
    h = nbd.NBD()
    with_alloc = rng.random() < 0.5
    if with_alloc:
        h.add_meta_context("base:allocation")
    for ctx in names:
        h.add_meta_context(ctx)
    h.add_meta_context("multisnap:changed:no-such-snapshot")
    h.connect_uri(uri(export.export))
    for ctx in names:
        if not h.can_meta_context(ctx):
            fail(f"{export.export}: {ctx} not selected (the reply must name it as asked)")
    if h.can_meta_context("multisnap:changed:no-such-snapshot"):
        fail("a BASE that does not exist was selected")
    contexts = list(names) + (["base:allocation"] if with_alloc else [])
    maps = full_maps(h, contexts)
    for ctx, base in names.items():
        what = f"{export.export} vs {ctx} (snapshot {base.id})"
        flags = per_chunk(maps[ctx], what)
        births = [v.birth for v in (export, base) if v.birth is not None]
        since = min(births)
        ce, cb = contents[export.export], contents[base.export]
        for c in range(NCHUNKS):
            if ce[c] != cb[c] and flags[c] != 1:
                fail(f"{what}: chunk {c} differs but is reported unchanged")
            if last_write.get(c, -1) < since and flags[c] != 0:
                fail(f"{what}: chunk {c} was not written since {since} but is reported changed")
        # REQ_ONE at a few places: one extent per context, within the request,
        # agreeing with the map.
        for _ in range(3):
            off = rng.randrange(SIZE)
            length = rng.randrange(1, min(SIZE - off, 4 * CHUNK) + 1)
            got = collect(h, [ctx], off, length, nbd.CMD_FLAG_REQ_ONE)[ctx]
            if len(got) != 1 or got[0][1] > length or got[0][1] == 0:
                fail(f"{what}: REQ_ONE at {off}+{length} gave {got}")
            if got[0][2] != flags[off // CHUNK]:
                fail(f"{what}: REQ_ONE at {off} says {got[0][2]}, the map {flags[off // CHUNK]}")
    h.shutdown()


def check_nbdinfo(export, base):
    out = subprocess.run(["nbdinfo", f"--map=multisnap:changed:{base.id}", uri(export.export)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if out.returncode != 0:
        fail(f"nbdinfo --map: {out.stderr.decode()}")
    pos = 0
    lines = out.stdout.decode().splitlines()
    for line in lines:
        m = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+([01])\s*", line)
        if not m or int(m.group(1)) != pos:
            fail(f"nbdinfo --map: unexpected line {line!r}:\n{out.stdout.decode()}")
        pos += int(m.group(2))
    if pos != SIZE or not lines:
        fail(f"nbdinfo --map covers {pos} bytes, not {SIZE}")
    print(f"nbdinfo --map=multisnap:changed:{base.id} {export.export}: {len(lines)} extents", flush=True)


def check_list():
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri("origin"))
    seen = []
    h.opt_list_meta_context(lambda name: seen.append(name) or 0)
    h.opt_abort()
    if "base:allocation" not in seen or "multisnap:changed:" not in seen:
        fail(f"LIST_META_CONTEXT gave {seen}")


def main():
    subprocess.run([MS, "create", f"{WORK}/origin.img", STORE, "--origin-size", str(SIZE),
                    "--chunk-size", str(CHUNK), "--format", FORMAT], check=True, stdout=subprocess.DEVNULL)
    log = open(f"{WORK}/serve.log", "ab")
    proc = subprocess.Popen([MS, "serve", STORE, "--nbd", "unix:" + SOCK, "--control", CTL], stdout=log, stderr=log)
    try:
        for _ in range(400):
            if os.path.exists(SOCK) and os.path.exists(CTL):
                break
            time.sleep(0.025)
        else:
            fail("serve did not start")
        run(proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def run(proc):
    origin = Volume("origin")
    snaps = []
    write_random(origin, 20)
    check_list()
    nbdinfo_done = False
    checks = 0
    for rnd in range(8 * SOAK):
        # New snapshots: of the origin, or (range store) clones of one.
        for _ in range(rng.randrange(1, 3) if len(snaps) < 40 else 0):
            parents = [s for s in snaps if not s.clone]
            args, birth = [], tick()
            if FORMAT == "range" and parents and rng.random() < 0.3:
                p = rng.choice(parents)
                args, birth = ["--of", str(p.id)], p.birth
            name = f"snap{len(snaps)}-r{rnd}"
            sid = int(ms("snapshot", "create", "--name", name, *args).stdout)
            snaps.append(Volume(f"snapshot/{sid}", sid, name, birth, clone=bool(args)))
            write_random(origin, rng.randrange(5, 30))
        # Writes to some snapshots, now and then a delete.
        for s in rng.sample(snaps, min(len(snaps), 2)):
            write_random(s, rng.randrange(1, 6))
        if len(snaps) > 4 and rng.random() < 0.3:
            victim = rng.choice(snaps)
            if ms("snapshot", "delete", str(victim.id), ok=False).returncode == 0:
                snaps.remove(victim)
                h = nbd.NBD()
                h.add_meta_context(f"multisnap:changed:{victim.id}")
                h.connect_uri(uri("origin"))
                if h.can_meta_context(f"multisnap:changed:{victim.id}"):
                    fail(f"a deleted BASE {victim.id} was selected")
                h.shutdown()
        write_random(origin, rng.randrange(5, 20))

        vols = [origin] + snaps
        contents = {v.export: read_chunks(v) for v in vols}
        exports = [origin] + rng.sample(snaps, min(len(snaps), 2))
        for e in exports:
            bases = rng.sample(snaps, min(len(snaps), 3))
            if bases:
                check_pair(e, bases, contents)
                checks += len(bases)
        if not nbdinfo_done and snaps:
            check_nbdinfo(origin, snaps[0])
            nbdinfo_done = True
        if proc.poll() is not None:
            fail(f"serve exited with {proc.returncode}")
    print(f"changed_context_test: {checks} export/base maps checked, {len(snaps)} snapshots at the end", flush=True)


main()
