#!/usr/bin/python3
"""Replication through the real CLI: a randomized chain of full and
incremental sends from a source store into two receivers (the other store
format, another chunk size), with receives cut at random points (kill -9 of
`receive` and of the receiving `serve`), then resumed or aborted; every
received snapshot must read exactly as the source's (both read over NBD).
Then the refusals: each must change nothing and leave nothing pending.

usage: replication_test.py MULTISNAP WORKDIR FORMAT
MULTISNAP_SEED=n replays a run; MULTISNAP_SOAK=n makes it n times longer.
"""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import nbd

MS, WORK, FORMAT = sys.argv[1], sys.argv[2], sys.argv[3]
SEED = int(os.environ.get("MULTISNAP_SEED", random.randrange(1 << 30)))
SOAK = int(os.environ.get("MULTISNAP_SOAK", "1"))
print(f"replication_test: seed {SEED} (MULTISNAP_SEED={SEED} replays)", flush=True)
rng = random.Random(SEED)
SIZE = 24 << 20


LIVE = []  # serve processes, killed on any exit


def kill_all():
    for p in LIVE:
        if p.poll() is None:
            p.kill()
            p.wait()


import atexit
atexit.register(kill_all)


def fail(msg):
    print(f"FAILED (seed {SEED}): {msg}", flush=True)
    sys.exit(1)


def run(*args, ok=True, input=None, stdin=None, stdout=subprocess.PIPE):
    p = subprocess.run([MS, *args], input=input, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    if ok and p.returncode != 0:
        fail(f"multisnap {' '.join(args)}: {p.stderr.decode()}")
    return p


class Store:
    def __init__(self, name, fmt, chunk):
        self.name, self.dir = name, os.path.join(WORK, name)
        os.makedirs(self.dir, exist_ok=True)
        self.store = os.path.join(self.dir, "store.img")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.ctl = os.path.join(self.dir, "ctl")
        self.proc = None
        self.size = SIZE
        run("create", os.path.join(self.dir, "origin.img"), self.store, "--origin-size", str(SIZE),
            "--chunk-size", chunk, "--format", fmt, "--store-size", "512M")

    def start(self):
        for f in (self.sock, self.ctl):
            if os.path.exists(f):
                os.unlink(f)
        log = open(os.path.join(self.dir, "serve.log"), "ab")
        self.proc = subprocess.Popen([MS, "serve", self.store, "--nbd", "unix:" + self.sock, "--control", self.ctl],
                                     stdout=log, stderr=log)
        LIVE.append(self.proc)
        for _ in range(400):
            if os.path.exists(self.sock) and os.path.exists(self.ctl):
                return
            if self.proc.poll() is not None:  # the lock of a serve just killed: try again
                self.proc = subprocess.Popen([MS, "serve", self.store, "--nbd", "unix:" + self.sock, "--control",
                                              self.ctl], stdout=log, stderr=log)
                LIVE.append(self.proc)
            time.sleep(0.025)
        fail(f"{self.name}: serve did not start")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait() != 0:
            fail(f"{self.name}: serve exited with {self.proc.returncode}")
        self.proc = None

    def check(self):
        # Right after a kill -9 the kernel may still hold the dead serve's
        # lock for a moment (io_uring tears its files down asynchronously).
        for _ in range(100):
            p = run("check", self.store, ok=False)
            if p.returncode == 0 or b"in use" not in p.stderr:
                break
            time.sleep(0.05)
        if p.returncode != 0:
            fail(f"{self.name}: check: {p.stdout.decode()}{p.stderr.decode()}")

    def ms(self, *args, **kw):
        return run(*args, "--control", self.ctl, **kw)

    def uri(self, export):
        return f"nbd+unix:///{export}?socket={self.sock}"

    def digest(self, export):
        h = nbd.NBD()
        h.connect_uri(self.uri(export))
        d = hashlib.sha256()
        for off in range(0, SIZE, 4 << 20):
            d.update(h.pread(min(4 << 20, SIZE - off), off))
        h.shutdown()
        return d.hexdigest()

    def snapshots(self):
        import json
        return json.loads(self.ms("snapshot", "list", "--json").stdout)

    def write_random(self, export, writes):
        h = nbd.NBD()
        h.connect_uri(self.uri(export))
        for _ in range(writes):
            length = rng.choice([512, 4096, 65536, 300000, 1 << 20])
            off = rng.randrange(0, self.size - length)
            kind = rng.random()
            if kind < 0.15:
                h.zero(length, off)
            elif kind < 0.2:
                h.trim(length, off)
            else:
                h.pwrite(rng.randbytes(length) if rng.random() < 0.7 else bytes([rng.randrange(256)]) * length, off)
        h.flush()
        h.shutdown()


def receive_all(rcv, stream_bytes, name=None):
    args = ["receive"] + (["--name", name] if name else [])
    return rcv.ms(*args, input=stream_bytes, ok=False)


def interrupted_receive(rcv, stream_bytes):
    """Cuts a receive at a random point: kill -9 of receive or of serve."""
    cut = rng.randrange(0, max(1, len(stream_bytes)))
    p = subprocess.Popen([MS, "receive", "--control", rcv.ctl], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(stream_bytes[:cut])
        p.stdin.flush()
    except BrokenPipeError:
        pass
    time.sleep(rng.random() * 0.2)
    if rng.random() < 0.5:
        p.kill()
        p.wait()
        how = "receive"
    else:
        rcv.kill9()
        p.kill()
        p.wait()
        rcv.check()
        rcv.start()
        how = "serve"
    return f"kill -9 of {how} after {cut} of {len(stream_bytes)} bytes"


def main():
    other = "bitmask" if FORMAT == "range" else "range"
    src = Store("src", FORMAT, "64K")
    receivers = [Store("rcv-other-format", other, "64K"), Store("rcv-4k", FORMAT, "4K")]
    for s in [src, *receivers]:
        s.start()
    src.write_random("origin", 40)
    sent = []  # (name, digest)
    prev = None
    for rnd in range(6 * SOAK):
        name = f"s{rnd}"
        src.ms("snapshot", "create", "--name", name)
        digest = src.digest("snapshot/" + name)
        args = ["send", name] + (["--from", prev] if prev else []) + (["--compress"] if rng.random() < 0.5 else [])
        stream = src.ms(*args).stdout
        if prev is None and len(stream) > SIZE + (1 << 20):
            fail(f"a full stream of {len(stream)} bytes for a {SIZE}-byte volume")
        for rcv in receivers:
            # What each received snapshot holds: its source's digest (checked
            # when it arrived and after every receive since), not read again.
            known = dict(sent)
            before = [(s["uuid"], known[s["name"]] if s["name"] in known else rcv.digest(s["export"]))
                      for s in rcv.snapshots()]
            if rng.random() < 0.5:
                how = interrupted_receive(rcv, stream)
                if rng.random() < 0.4:
                    rcv.ms("receive", "--abort")
                    after = [(s["uuid"], rcv.digest(s["export"])) for s in rcv.snapshots()]
                    if after != before:
                        fail(f"{rcv.name}: round {rnd}: snapshots changed after {how} and --abort")
            r = receive_all(rcv, stream)
            if r.returncode != 0:
                fail(f"{rcv.name}: round {rnd}: receive: {r.stderr.decode()}")
            got = rcv.digest("snapshot/" + name)
            if got != digest:
                fail(f"{rcv.name}: round {rnd}: received {name} differs from the source's")
            now = rcv.snapshots()
            for uuid, d in before:  # earlier snapshots untouched
                match = [s for s in now if s["uuid"] == uuid]
                if not match or rcv.digest(match[0]["export"]) != d:
                    fail(f"{rcv.name}: round {rnd}: an earlier snapshot changed")
        sent.append((name, digest))
        prev = name
        src.write_random("origin", rng.randrange(5, 40))
        if rng.random() < 0.3 and len(sent) > 1:
            # Writes to an older snapshot: it is marked, so never a base.
            old = sent[0][0]
            src.write_random("snapshot/" + old, 3)
    # Every snapshot of the chain is still identical on every receiver.
    for rcv in receivers:
        for name, digest in sent:
            if rcv.digest("snapshot/" + name) != digest:
                fail(f"{rcv.name}: {name} differs at the end")
    refusals(src, receivers[0], prev)
    for s in [src, *receivers]:
        s.stop()
        s.check()
    print("replication: ok", flush=True)


def refusals(src, rcv, newest):
    """Each refused receive changes nothing and leaves nothing pending."""
    import json

    def state():
        snaps = rcv.snapshots()
        return [(s["id"], s["uuid"], s["name"]) for s in snaps], rcv.digest(snaps[-1]["export"])

    def refused(stream, want, what):
        before = state()
        r = receive_all(rcv, stream)
        if r.returncode == 0:
            fail(f"refusal: {what} was accepted")
        if want not in r.stderr.decode():
            fail(f"refusal: {what}: expected '{want}' in: {r.stderr.decode()}")
        if state() != before:
            fail(f"refusal: {what} changed the receiver")
        out = rcv.ms("receive", "--abort").stdout.decode()
        if "nothing to abort" not in out:
            fail(f"refusal: {what} left a receive pending: {out}")

    src.ms("snapshot", "create", "--name", "r1")
    good = src.ms("send", "r1", "--from", newest).stdout
    refused(good[: len(good) // 2], "truncated", "a truncated stream")
    refused(good[:-1], "truncated", "a stream missing its last byte")
    for _ in range(6):
        pos = rng.randrange(len(good))
        bad = bytearray(good)
        bad[pos] ^= 1 << rng.randrange(8)
        refused(bytes(bad), "", f"a stream with byte {pos} flipped")
    refused(b"not a stream at all" * 100, "not a multisnap stream", "a foreign stream")
    # A stream for a base the receiver lacks.
    src.ms("snapshot", "create", "--name", "r2")
    refused(src.ms("send", "r2", "--from", "r1").stdout, "does not have", "a stream for another base")
    # A base that is not the newest: receive r1, then offer newest -> r2... from the old base.
    ok = receive_all(rcv, good)
    if ok.returncode != 0:
        fail(f"a good stream after the refusals: {ok.stderr.decode()}")
    refused(good, "already has", "the same stream twice")
    old_base = src.ms("send", "r2", "--from", newest).stdout
    refused(old_base, "not the newest", "a base that is not the newest")
    # The receiver's origin written since the base.
    h = nbd.NBD()
    h.connect_uri(rcv.uri("origin"))
    h.pwrite(b"x" * 4096, 8192)
    h.flush()
    h.shutdown()
    refused(src.ms("send", "r2", "--from", "r1").stdout, "origin has been written", "a receiver origin written since")
    # A volume of another size.
    other = Store("other-size", FORMAT, "64K")
    os.unlink(other.store)
    run("create", os.path.join(other.dir, "origin2.img"), other.store, "--origin-size", str(SIZE // 2),
        "--store-size", "256M", "--force")
    other.size = SIZE // 2
    other.start()
    other.ms("snapshot", "create", "--name", "x")
    refused(other.ms("send", "x").stdout, "byte volume", "a stream of another volume size")
    # A written-to snapshot cannot be a base.
    other.write_random("snapshot/x", 1)
    other.ms("snapshot", "create", "--name", "y")
    r = other.ms("send", "y", "--from", "x", ok=False)
    if r.returncode == 0 or "written to" not in r.stderr.decode():
        fail(f"a written-to base was accepted: {r.stderr.decode()}")
    other.stop()


main()
