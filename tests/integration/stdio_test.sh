#!/usr/bin/env bash
# serve --nbd stdio: one NBD client on standard input and output, as nbdkit
# -s. libnbd's connect_command (one socket as both), two pipes (a raw
# client below), TLS over stdio; serve exits 0 with everything committed
# when the client goes, and stops cleanly on SIGTERM.
source "$(dirname "$0")/lib.sh"
need nbdsh

create_store origin.img store.img --origin-size 32M --chunk-size 64K >/dev/null
export MULTISNAP

# ---- libnbd connect_command: write, then a second process reads it back.
$PY - <<'PY'
import nbd, os
m = os.environ["MULTISNAP"]
h = nbd.NBD()
h.connect_command([m, "serve", "store.img", "--nbd", "stdio", "--log-level", "warn"])
assert h.get_size() == 32 << 20
h.pwrite(b"\x5a" * (1 << 20), 3 << 20)
h.flush()
h.shutdown()
del h       # closing the handle waits for serve to exit
h = nbd.NBD()
h.connect_command([m, "serve", "store.img", "--nbd", "stdio", "--log-level", "warn"])
assert h.pread(1 << 20, 3 << 20) == b"\x5a" * (1 << 20), "data did not survive"
assert h.pread(4096, 0) == bytes(4096)
h.shutdown()
PY
# serve has exited (check refuses a store a serve holds) and left it clean.
ms check store.img >/dev/null || fail "store not clean after stdio clients"
[ ! -e multisnap.sock ] && [ ! -e multisnap.ctl ] || fail "stdio serve made sockets"

# ---- Two pipes and a raw client; the exit status; SIGTERM; junk on stdout
$PY - <<'PY'
import os, signal, struct, subprocess, sys
m = os.environ["MULTISNAP"]
OPT = 0x49484156454f5054
def start():
    p = subprocess.Popen([m, "serve", "store.img", "--nbd", "stdio"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=open("serve.log", "ab"))
    def read(n):
        b = b""
        while len(b) < n:
            c = p.stdout.read(n - len(b))
            if not c: sys.exit("stream ended after %r" % b)
            b += c
        return b
    g = read(18)
    assert g[:16] == b"NBDMAGIC" + struct.pack(">Q", OPT), g
    name = b"origin"
    p.stdin.write(struct.pack(">I", 3) + struct.pack(">QII", OPT, 7, 4 + len(name) + 2) +
                  struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    p.stdin.flush()
    while True:
        magic, opt, rtype, length = struct.unpack(">QIII", read(20))
        read(length)
        if rtype == 1: break
        assert rtype == 3, hex(rtype)
    return p, read
# A READ through the pipes, then NBD_CMD_DISC: exit 0.
p, read = start()
p.stdin.write(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 3 << 20, 4096)); p.stdin.flush()
magic, err, handle = struct.unpack(">IIQ", read(16))
assert (magic, err, handle) == (0x67446698, 0, 7), (hex(magic), err, handle)
assert read(4096) == b"\x5a" * 4096
p.stdin.write(struct.pack(">IHHQQI", 0x25609513, 0, 2, 8, 0, 0)); p.stdin.flush()
assert p.wait(20) == 0, "exit status %d after DISC" % p.returncode
assert p.stdout.read() == b"", "bytes after the end"
# The client just closes its end (no DISC): exit 0 too.
p, read = start()
p.stdin.close()
assert p.wait(20) == 0, "exit status %d after the client closed" % p.returncode
# SIGTERM with a client connected: a clean stop, exit 0, not "exit at once".
p, read = start()
p.send_signal(signal.SIGTERM)
assert p.wait(20) == 0, "exit status %d after SIGTERM" % p.returncode
PY
grep -q "client on standard input and output has gone" serve.log || fail "no word of the client's end"
ms check store.img >/dev/null || fail "store not clean after pipe clients"

# ---- Refusals
expect_fail "--nbd stdio serves one client" ms serve store.img --nbd stdio --nbd "unix:$SOCK"

# ---- TLS over stdio (PSK), if the tools are there
if command -v psktool >/dev/null; then
  psktool -u alice -p keys.psk >/dev/null 2>&1
  $PY - <<'PY'
import nbd, os
m = os.environ["MULTISNAP"]
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_psk_file("keys.psk")
h.set_tls_username("alice")
h.connect_command([m, "serve", "store.img", "--nbd", "stdio", "--tls-psk", "keys.psk", "--log-level", "warn"])
assert h.get_tls_negotiated()
assert h.pread(1 << 20, 3 << 20) == b"\x5a" * (1 << 20)
h.shutdown()
# A plain client against it is refused.
h = nbd.NBD()
h.set_tls(nbd.TLS_DISABLE)
try:
    h.connect_command([m, "serve", "store.img", "--nbd", "stdio", "--tls-psk", "keys.psk", "--log-level", "off"])
    raise SystemExit("a plain client got through --tls require over stdio")
except nbd.Error:
    pass
PY
else
  echo "psktool missing: TLS over stdio not tested"
fi
echo "PASSED"
