#!/usr/bin/env bash
# Idle NBD connections cannot lock anyone out of `multisnap serve`: 1100
# sockets (more than the 1024 clients it serves) connect over unix and TCP
# and send nothing. nbdinfo still works at once over both, a client connected
# before the flood keeps working, `multisnap status` answers on the control
# socket, and with --handshake-timeout 2 every idle socket is closed soon
# after the deadline. Then the same with only 256 open files allowed: the
# handshakes must leave descriptors for real clients and the control socket.
source "$(dirname "$0")/lib.sh"
need nbdinfo
[ -x "$PY" ] || skip "$PY is not installed"

create_store origin.img store.img --origin-size 16M --chunk-size 64K >/dev/null
start_serve --nbd tcp:127.0.0.1:0 --handshake-timeout 2
PORT=$(grep -o 'serving NBD on tcp:127.0.0.1:[0-9]*' serve.log | head -1 | sed 's/.*://')
[ -n "$PORT" ] || fail "serve did not report its TCP port"

$PY - "$SOCK" "$PORT" "$MULTISNAP" <<'PY' || fail "see above"
import json, resource, socket, struct, subprocess, sys, time

sock_path, port, multisnap = sys.argv[1], int(sys.argv[2]), sys.argv[3]
FLOOD, DEADLINE = 1100, 2.0
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard < FLOOD + 100:
    print(f"SKIPPED: needs {FLOOD + 100} open files, the hard limit is {hard}")
    sys.exit(77)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def check(ok, what):
    if not ok:
        sys.exit(f"FAILED: {what}")

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        check(c, "the established client was disconnected")
        b += c
    return b

def read_4k(s, handle):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, handle, 0, 4096))  # NBD_CMD_READ
    magic, error, got = struct.unpack(">IIQ", recv_exact(s, 16))
    check(magic == 0x67446698 and error == 0 and got == handle, "READ failed")
    recv_exact(s, 4096)

def run(*cmd):
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    took = time.monotonic() - start
    check(p.returncode == 0, f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    check(took < 5, f"{' '.join(cmd)} took {took:.1f} s")
    return p.stdout

# A client in transmission before the flood.
established = socket.socket(socket.AF_UNIX)
established.settimeout(10)
established.connect(sock_path)
check(recv_exact(established, 16) == b"NBDMAGICIHAVEOPT", "greeting")
recv_exact(established, 2)
established.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 1, 6) + b"origin")
recv_exact(established, 10)  # size and flags (NO_ZEROES)
read_4k(established, 1)

# The flood: blocking connects (a unix connect waits while the backlog is full).
flood = []
for i in range(FLOOD):
    s = socket.socket(socket.AF_UNIX) if i % 2 else socket.socket()
    s.connect(sock_path if i % 2 else ("127.0.0.1", port))
    flood.append(s)
flood_done = time.monotonic()

run("nbdinfo", f"nbd+unix:///origin?socket={sock_path}")
run("nbdinfo", f"nbd://127.0.0.1:{port}/origin")
status = json.loads(run(multisnap, "status", "--json"))
nbd = status.get("status", status)["nbd"]
check(nbd["connections"] < 400, f"{nbd['connections']} connections held: the flood piled up")
read_4k(established, 2)

# Past the deadline every idle socket is closed (the oldest ones much earlier,
# to make room), and the established client is still there.
for s in flood:
    s.settimeout(max(0.1, flood_done + DEADLINE + 5 - time.monotonic()))
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        sys.exit(f"FAILED: an idle connection was still open {DEADLINE + 5:.0f} s after the flood")
read_4k(established, 3)
established.close()
print(f"ok: {FLOOD} idle connections, nbdinfo and status worked, all idle ones closed")
PY

grep -q "dropped to make room for newer handshakes" serve.log || fail "no summary of the dropped handshakes in the log"
# Drops are summed up in the log at most every 10 s.
for _ in $(seq 120); do grep -q "not finishing the handshake within 2000 ms" serve.log && break; sleep 0.1; done
grep -q "not finishing the handshake within 2000 ms" serve.log || fail "no summary of the handshake timeouts in the log"
[ "$(grep -c 'connection.*closed' serve.log)" -lt 10 ] || fail "one log line per dropped connection"
connections() { ms status --json | $PY -c 'import json, sys; j = json.load(sys.stdin); print(j.get("status", j)["nbd"]["connections"])'; }
for _ in $(seq 50); do [ "$(connections)" = 0 ] && break; sleep 0.1; done
[ "$(connections)" = 0 ] || fail "$(connections) connections left after the flood"
stop_serve

# Few descriptors (soft = hard, so serve cannot raise it): 800 idle
# connections, each wanting two, must not take them all.
rm -f "$SOCK" "$MULTISNAP_CONTROL"
(ulimit -n 256 && exec "$MULTISNAP" serve store.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL") >>serve.log 2>&1 &
SERVE_PID=$!
wait_for_socket "$SOCK"
wait_for_socket "$MULTISNAP_CONTROL"
$PY - "$SOCK" "$MULTISNAP" <<'PY' || fail "see above"
import resource, socket, subprocess, sys, time
sock_path, multisnap = sys.argv[1], sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
flood = []
for i in range(800):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    flood.append(s)
for cmd in ([multisnap, "status"], ["nbdinfo", "--size", f"nbd+unix:///origin?socket={sock_path}"],
            [multisnap, "status"]):
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    took = time.monotonic() - start
    if p.returncode != 0 or took > 5:
        sys.exit(f"FAILED: {' '.join(cmd)}: status {p.returncode} after {took:.1f} s: {p.stderr.strip()}")
print("ok: with 256 open files, status and nbdinfo worked beside 800 idle connections")
PY
grep -q "at most 32 connections negotiating" serve.log || fail "the negotiating cap did not follow the descriptor limit"
stop_serve
