#!/usr/bin/env bash
# The control socket against hostile requests: every command with every
# field set to every JSON type, bytes that are not UTF-8, over-long,
# unterminated and deeply nested lines. Every request must get exactly one
# answer line (a JSON object, ok false, the documented error code), and
# afterwards the daemon must still serve both the control socket and NBD.
source "$(dirname "$0")/lib.sh"
need nbdinfo

create_store origin.img store.img --origin-size 16M --chunk-size 64K >/dev/null
# A recognisable origin, to read back over NBD at the end.
$PY -c 'import os; f=open("origin.img","r+b"); f.write(bytes(range(256))*4096); f.close()'
start_serve
[ "$(ms snapshot create --name keep)" = 1 ] || fail "first snapshot"

$PY - "$MULTISNAP_CONTROL" "$FORMAT" <<'PY'
import json, socket, sys

CTL, FORMAT = sys.argv[1], sys.argv[2]
checked = 0

def exchange(data, close="shutdown"):
    """Sends raw bytes on a new connection; returns the answer lines."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)  # a server that never ends the connection fails, not hangs
    s.connect(CTL)
    s.sendall(data)
    if close == "close":  # gone without reading: the server must cope
        s.close()
        return None
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    assert out == b"" or out.endswith(b"\n"), "answer does not end with a newline: %r" % out[-200:]
    return out.split(b"\n")[:-1]

def parse(line):
    a = json.loads(line.decode("utf-8"))  # strict: the answer must be UTF-8 JSON
    assert isinstance(a, dict) and isinstance(a.get("ok"), bool), line[:200]
    if not a["ok"]:
        e = a["error"]
        assert isinstance(e["code"], str) and isinstance(e["errno"], int) and isinstance(e["message"], str), a
    return a

def code(a):
    return "ok" if a["ok"] else a["error"]["code"]

def expect(requests, want):
    """Sends the raw request lines on one connection; want: codes (a set
    of acceptable codes each), one per request."""
    global checked
    if isinstance(want, (str, set)):
        want = [want] * len(requests)
    lines = exchange(b"".join(r + b"\n" for r in requests))
    assert len(lines) == len(requests), "%d requests, %d answers: %r" % (len(requests), len(lines), lines[:3])
    answers = [parse(l) for l in lines]
    for r, a, w in zip(requests, answers, want):
        w = {w} if isinstance(w, str) else w
        assert code(a) in w, "request %r: want %s, got %r" % (r[:120], w, a)
        checked += 1
    return answers

# Every JSON type, as raw text (some are not valid JSON at all).
DEEP = 10000
VALUES = {
    "null": b"null", "true": b"true", "false": b"false", "zero": b"0", "minus1": b"-1",
    "2^32": b"4294967296", "2^64": b"18446744073709551616", "1.5": b"1.5", "2.0": b"2.0",
    "1e400": b"1e400", "-1e400": b"-1e400", "huge": b"9" * 400, "empty": b'""',
    "long": b'"' + b"a" * 5000 + b'"', "longer": b'"' + b"b" * 60000 + b'"',
    "digits": b'"4294967296"', "yes": b'"yes"', "array": b"[]", "array1": b"[1]",
    "object": b"{}", "object1": b'{"a":1}', "nul": b'"a\\u0000b"', "surrogate": b'"\\ud800"',
    "deep-array": b"[" * DEEP + b"]" * DEEP, "deep-object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep-open": b"[" * DEEP,
}
UNPARSABLE = {"1e400", "-1e400", "huge", "surrogate", "deep-array", "deep-object", "deep-open"}
INVALID = "invalid-argument"

def request(command, field=None, value=None, extra=b""):
    body = b'"command":' + command
    if field is not None:
        body += b',"' + field + b'":' + value
    return b"{" + body + extra + b"}"

# "command" itself: only a known command string is acceptable.
for name, v in VALUES.items():
    expect([request(v)], INVALID)

# Commands without fields ignore unknown fields of any type (forward
# compatibility) unless the line is not JSON.
for cmd in (b'"ping"', b'"status"', b'"snapshot-list"'):
    reqs = [request(cmd, b"x-future", v) for v in VALUES.values()]
    expect(reqs, [INVALID if n in UNPARSABLE else "ok" for n in VALUES])

# snapshot-list: "space" a bool (null: absent); anything else is refused.
reqs = [request(b'"snapshot-list"', b"space", v) for v in VALUES.values()]
expect(reqs, ["ok" if n in ("null", "true", "false") else INVALID for n in VALUES])

# snapshot-delete: "snapshot" is an ID or a name; "force" a bool. Field
# types are checked before the snapshot is looked up.
snap_want = {"zero": "not-found", "yes": "not-found", "digits": INVALID, "empty": INVALID,
             "long": INVALID, "longer": INVALID, "nul": "not-found"}
reqs, want = [], []
for n, v in VALUES.items():
    reqs.append(request(b'"snapshot-delete"', b"snapshot", v))
    want.append(snap_want.get(n, INVALID))
    reqs.append(request(b'"snapshot-delete"', b"snapshot", b"999", b',"force":' + v))
    want.append("not-found" if n in ("null", "true", "false") else INVALID)
    reqs.append(request(b'"snapshot-delete"', b"snapshot", b'"nosuch"', b',"x-future":' + v))
    want.append(INVALID if n in UNPARSABLE else "not-found")
expect(reqs, want)

# snapshot-create: "of" a reference (or "origin"), "name" a string. Only
# values of the wrong type or range here, so nothing is created...
of_want = {"zero": "not-found", "yes": "not-found", "nul": "not-found"}
name_want = {"long": INVALID, "longer": INVALID, "nul": INVALID}
reqs, want = [], []
for n, v in VALUES.items():
    if n == "null":
        continue
    reqs.append(request(b'"snapshot-create"', b"of", v))
    want.append(of_want.get(n, INVALID))
    if n not in ("empty", "yes"):
        reqs.append(request(b'"snapshot-create"', b"name", v))
        want.append(name_want.get(n, INVALID))
expect(reqs, want)
# ...and these are well-typed: of null is the origin, name null no name.
a = expect([request(b'"snapshot-create"', b"of", b"null", b',"name":null,"x-future":{"a":[]}')], "ok")[0]
assert a["snapshot"]["of"] is None and a["snapshot"]["name"] is None, a
created = a["snapshot"]["id"]
expect([request(b'"snapshot-create"', b"name", b'"keep"')], "exists")
expect([request(b'"snapshot-create"', b"of", b'"origin"', b',"name":"with space"')], INVALID)

# The issue report, exactly: a string force is refused, the daemon lives.
expect([b'{"command":"snapshot-delete","snapshot":1,"force":"yes"}'], INVALID)
expect([('{"command":"snapshot-delete","snapshot":%d,"force":null}' % created).encode()], "ok")

# Not a request at all.
expect([b"", b" ", b"[]", b'"ping"', b"1", b"null", b"true", b"{", b"}", b"{}", b'{"cmd":"ping"}',
        b'{"command":"ping"}{"command":"ping"}', b"\x00", b'{"command":"ping"}\x00'], INVALID)
# Not UTF-8: in a string, in the command, outside strings.
expect([b'{"command":"snapshot-create","name":"\xff\xfe"}', b'{"command":"\xc3"}',
        b'{"command":"ping",\x80:1}', b'{"command":"snapshot-delete","snapshot":"\xed\xa0\x80"}'], INVALID)
# CR LF line endings and surrounding blanks are JSON whitespace.
expect([b' {"command":"ping"} \r'], "ok")

# A line over 64 KiB is answered and skipped; the connection goes on.
lines = exchange(b'{"command":"ping","x":"' + b"a" * 70000 + b'"}\n{"command":"ping"}\n')
assert [code(parse(l)) for l in lines] == [INVALID, "ok"], lines
lines = exchange(b"[" * 200000 + b'\n{"command":"status"}\n')
assert [code(parse(l)) for l in lines] == [INVALID, "ok"], [l[:100] for l in lines]
checked += 4
# An unterminated line followed by close: one error answer, then the end.
lines = exchange(b'{"command":"ping"}\n{"command":"snapshot-create"}')
assert [code(parse(l)) for l in lines] == ["ok", INVALID], lines
checked += 2
# Gone without reading the answers (full close, answers sent into the void).
for data in (b'{"command":"status"}\n' * 50, b"[" * 60000, b'{"command":"snapshot-list"}\n' * 20):
    exchange(data, close="close")

# Everything above on one connection, pipelined, still one answer each.
everything = [request(v) for v in VALUES.values()] + \
    [request(b'"snapshot-delete"', b"snapshot", v) for v in VALUES.values()] + [b'{"command":"ping"}']
lines = exchange(b"".join(r + b"\n" for r in everything))
assert len(lines) == len(everything), (len(lines), len(everything))
assert code(parse(lines[-1])) == "ok"
checked += len(everything)
print("control: %d hostile requests answered as documented" % checked)
PY

# Still serving: the control socket, and NBD (the origin reads back).
kill -0 "$SERVE_PID" || fail "serve died"
ms status >/dev/null || fail "status after the hostile requests"
[ "$(ms snapshot list --json | $PY -c 'import json,sys; print([s["name"] for s in json.load(sys.stdin)])')" = "['keep']" ] \
  || fail "snapshot list after the hostile requests: $(ms snapshot list)"
nbdinfo --size "$(uri origin)" | grep -qx 16777216 || fail "nbdinfo on the origin"
$PY - "$(uri origin)" <<'PY'
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(1 << 20, 0) == bytes(range(256)) * 4096, "origin data read over NBD differs"
h.shutdown()
PY
stop_serve
ms check store.img | grep -q clean || fail "check after the hostile requests"
echo "control: ok"
