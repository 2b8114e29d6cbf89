"""Writer and verifier for the kill -9 test (run with /usr/bin/python3).

  kill9_writer.py write URI LOG MULTISNAP   writes until killed
  kill9_writer.py verify URI LOG            checks what survived

The writer writes 4 KiB blocks in a region of the origin in an order fixed by
a seeded RNG (so the verifier can replay it), each block stamped with its
sequence number. Every 64 writes it flushes and logs "flushed SEQ"; every 8
flushes it takes a snapshot and logs "snapshot ID SEQ". After a kill -9 of
the server, every block must hold its last version as of the last logged
flush or a later one, and every logged snapshot must hold exactly the
blocks as of its sequence number.
"""
import hashlib
import os
import random
import struct
import subprocess
import sys

import nbd

BLOCK = 4096
BASE = 32 << 20
BLOCKS = 8192  # 32 MiB


def content(seq, blk):
    head = struct.pack("<QQ", seq, blk)
    body = hashlib.sha256(head).digest() * ((BLOCK - 16) // 32 + 1)
    return head + body[: BLOCK - 16]


def order():
    r = random.Random(20261121)
    while True:
        yield r.randrange(BLOCKS)


def write(uri, log, multisnap):
    h = nbd.NBD()
    h.connect_uri(uri)
    h.zero(BLOCKS * BLOCK, BASE)  # every round starts from zeros
    h.flush()
    out = open(log, "a")
    seq = 0
    flushes = 0
    gen = order()
    while True:
        for _ in range(64):
            seq += 1
            blk = next(gen)
            h.pwrite(content(seq, blk), BASE + blk * BLOCK)
        h.flush()
        out.write("flushed %d\n" % seq)
        out.flush()
        os.fsync(out.fileno())
        flushes += 1
        if flushes % 8 == 0:
            sid = subprocess.run([multisnap, "snapshot", "create"], check=True, capture_output=True,
                                 text=True).stdout.strip()
            out.write("snapshot %s %d\n" % (sid, seq))
            out.flush()
            os.fsync(out.fileno())


def verify(uri_base, log):
    flushed = 0
    snaps = []
    for line in open(log):
        parts = line.split()
        if parts[0] == "flushed":
            flushed = int(parts[1])
        elif parts[0] == "snapshot":
            snaps.append((int(parts[1]), int(parts[2])))
    assert flushed > 0, "the writer never flushed"
    # Replay the order far enough past the last flush.
    horizon = flushed + 64 * 1000
    writes = {}  # blk -> sorted seqs
    gen = order()
    for seq in range(1, horizon + 1):
        writes.setdefault(next(gen), []).append(seq)

    def check_volume(name, upto, exact):
        h = nbd.NBD()
        h.connect_uri(uri_base.replace("EXPORT", name))
        data = h.pread(BLOCKS * BLOCK, BASE)
        h.shutdown()
        for blk in range(BLOCKS):
            got = data[blk * BLOCK:(blk + 1) * BLOCK]
            seqs = writes.get(blk, [])
            floor = max([s for s in seqs if s <= upto], default=0)
            if got == bytes(BLOCK):
                ok = floor == 0
                seen = 0
            else:
                seen, b = struct.unpack_from("<QQ", got)
                ok = b == blk and got == content(seen, blk) and seen in seqs and seen >= floor
                if exact:
                    ok = ok and seen == floor
            if not ok:
                sys.exit("%s: block %d holds version %d, expected %s%d" %
                         (name, blk, seen, "exactly " if exact else "at least ", floor))

    check_volume("origin", flushed, exact=False)
    for sid, seq in snaps:
        check_volume("snapshot/%d" % sid, seq, exact=True)
    print("verified: flushed up to %d, %d snapshots" % (flushed, len(snaps)))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        verify(sys.argv[2], sys.argv[3])
