#!/usr/bin/env python3
"""Writes a seed corpus for the nbd_fuzz libFuzzer target (tests/fuzz/nbd_fuzz.cc).

Each seed is what a client might send: a chunking byte (see fuzz_driver.h),
client flags, options, then transmission requests against the fuzz driver's
exports ("disk" 1 MiB, "ro" read-only, "small" with min_block 512).

    tests/nbd/make_fuzz_corpus.py CORPUS_DIR
"""
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQUEST = 0x25609513


def opt(option, payload=b""):
    return struct.pack(">QII", IHAVEOPT, option, len(payload)) + payload


def name(n):
    return struct.pack(">I", len(n)) + n


def go(n, infos=(), option=7):
    return opt(option, name(n) + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def meta(n, queries, option=10):
    body = name(n) + struct.pack(">I", len(queries))
    return opt(option, body + b"".join(name(q) for q in queries))


def req(cmd, offset, length, flags=0, handle=1, payload=b""):
    return struct.pack(">IHHQQI", REQUEST, flags, cmd, handle, offset, length) + payload


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    flags = struct.pack(">I", 3)
    structured = opt(8) + meta(b"disk", [b"base:allocation"])
    io = (req(1, 4096, 512, payload=b"x" * 512) + req(0, 4096, 512, handle=2) +
          req(7, 0, 65536, flags=8, handle=3) + req(6, 0, 8192, flags=2, handle=4) +
          req(4, 8192, 4096, flags=1, handle=5) + req(3, 0, 0, handle=6) +
          req(5, 0, 4096, handle=7) + req(0, 1 << 20, 512, handle=8) + req(2, 0, 0, handle=9))
    seeds = {
        "list": flags + opt(3) + opt(2),
        "info": flags + go(b"", (0, 1, 2, 3), option=6) + go(b"nope", option=6),
        "meta_list": flags + opt(8) + meta(b"disk", [], option=9) + meta(b"disk", [b"base:"], 9),
        "go_simple": flags + go(b"disk") + io,
        "go_structured": flags + structured + go(b"disk", (3,)) + io,
        "go_structured_chunked": flags + structured + go(b"disk") + io,
        "export_name": flags + opt(1, b"ro") + io,
        "small": flags + opt(8) + go(b"small") + req(0, 100, 512) + req(1, 512, 8192),
        "oversized": flags + opt(77, b"\0" * 5000) + opt(2),
    }
    for key, data in seeds.items():
        # The first byte tells the driver how to split the rest into reads.
        mode = b"\xf0" if key.endswith("_chunked") else b"\x00"
        with open(os.path.join(out, key), "wb") as f:
            f.write(mode + data)


if __name__ == "__main__":
    main()
