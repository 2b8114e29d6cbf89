#!/usr/bin/env bash
# NBD over TLS (NBD_OPT_STARTTLS): X.509 certificates and PSK made here with
# certtool and psktool (no key is ever committed), against nbdinfo, nbdcopy,
# libnbd, qemu-img and qemu-io over unix and TCP; --tls require refusing
# plain clients; a wrong key failing while good clients go on; eight TLS
# clients at once; --tls on serving the same data plain and over TLS; the
# handshake deadline covering the TLS handshake; start-up errors.
source "$(dirname "$0")/lib.sh"
need certtool psktool nbdinfo nbdcopy nbdsh qemu-img qemu-io

# ---- Credentials
template() { printf '%s\n' "$@" > "$WORK/tmpl.info"; }
template 'cn = multisnap test CA' ca cert_signing_key 'expiration_days = 2'
certtool --generate-privkey --outfile ca-key.pem 2>/dev/null
certtool --generate-self-signed --load-privkey ca-key.pem --template tmpl.info --outfile ca-cert.pem 2>/dev/null
issue() {  # issue DIR NAME KIND CN [extra template lines]
  local dir=$1 name=$2 kind=$3 cn=$4; shift 4
  mkdir -p "$dir"
  cp ca-cert.pem "$dir/"
  template 'organization = multisnap test' "cn = $cn" "$kind" encryption_key signing_key 'expiration_days = 2' "$@"
  certtool --generate-privkey --outfile "$dir/$name-key.pem" 2>/dev/null
  certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \
    --load-privkey "$dir/$name-key.pem" --template tmpl.info --outfile "$dir/$name-cert.pem" 2>/dev/null
}
issue server server tls_www_server localhost 'dns_name = localhost' 'ip_address = 127.0.0.1'
issue client client tls_www_client client1
mkdir -p nocert && cp ca-cert.pem nocert/          # trusts the server, has no certificate
# A certificate from another CA, which --tls-verify-peer must refuse.
template 'cn = rogue CA' ca cert_signing_key 'expiration_days = 2'
certtool --generate-privkey --outfile rogue-ca-key.pem 2>/dev/null
certtool --generate-self-signed --load-privkey rogue-ca-key.pem --template tmpl.info --outfile rogue-ca.pem 2>/dev/null
mkdir -p rogue && cp ca-cert.pem rogue/
template 'cn = rogue' tls_www_client encryption_key signing_key 'expiration_days = 2'
certtool --generate-privkey --outfile rogue/client-key.pem 2>/dev/null
certtool --generate-certificate --load-ca-certificate rogue-ca.pem --load-ca-privkey rogue-ca-key.pem \
  --load-privkey rogue/client-key.pem --template tmpl.info --outfile rogue/client-cert.pem 2>/dev/null
mkdir -p psk wrongpsk
psktool -u alice -p psk/keys.psk >/dev/null 2>&1
psktool -u bob -p psk/keys.psk >/dev/null 2>&1
chmod 600 psk/keys.psk
psktool -u alice -p wrongpsk/keys.psk >/dev/null 2>&1   # alice, another key
grep -q '^alice:' psk/keys.psk && grep -q '^bob:' psk/keys.psk || fail "psktool wrote no keys"

create_store origin.img store.img --origin-size 64M --chunk-size 64K >/dev/null
head -c 8M /dev/urandom > a.bin
TLSU="nbds+unix:///origin?socket=$SOCK"
CERTS="tls-certificates=$WORK/client"

# ---- X.509, TLS required, on unix and TCP
start_serve --nbd tcp:127.0.0.1:0 --tls require --tls-certificates "$WORK/server"
PORT=$(sed -n 's/.*serving NBD on tcp:127.0.0.1:\([0-9]*\).*/\1/p' serve.log | head -1)
[ -n "$PORT" ] || fail "no TCP port in the log"
grep -q "TLS required (X.509 certificates from $WORK/server)" serve.log || fail "TLS not announced"

nbdinfo "$TLSU&$CERTS" > info.txt
grep -q "with TLS" info.txt || fail "nbdinfo did not use TLS: $(cat info.txt)"
nbdcopy a.bin "$TLSU&$CERTS"
nbdcopy --flush "nbds://localhost:$PORT/origin?$CERTS" back.bin   # TCP, host name checked
cmp <(head -c 8M back.bin) a.bin || fail "nbdcopy over TLS differs"
nbdinfo --list "nbds://localhost:$PORT?$CERTS" | grep -q 'export="origin"' || fail "list over TLS"
nbdinfo --map "$TLSU&$CERTS" | grep -q data || fail "map over TLS"

# A plain client is refused cleanly: an error, not a hang or a dropped server.
expect_fail "" timeout 10 nbdinfo "$(uri origin)"
expect_fail "" timeout 10 nbdinfo --list "$(uri origin)"
$PY - "$SOCK" <<'PY'
import nbd, sys
h = nbd.NBD()
h.set_tls(nbd.TLS_DISABLE)
h.set_opt_mode(True)
h.connect_uri("nbd+unix:///origin?socket=" + sys.argv[1])
try:
    h.opt_go()
    sys.exit("a plain client got in")
except nbd.Error as e:
    # libnbd reports NBD_REP_ERR_TLS_REQD as "TLS required"-ish; the errno is what matters.
    print("refused:", e)
h.opt_abort()
PY
grep -q "protocol violation" serve.log && fail "a refused plain client counted as a protocol violation"
# qemu with tls-creds-x509, over TCP (host name) and unix (json: filename).
qemu-io --object "tls-creds-x509,id=tls0,endpoint=client,dir=$WORK/client" --image-opts \
  "driver=raw,file.driver=nbd,file.host=localhost,file.port=$PORT,file.export=origin,file.tls-creds=tls0" \
  -c 'write -P 0x42 16M 1M' -c 'read -P 0x42 16M 1M' | grep -q "read 1048576" || fail "qemu-io over TLS"
cp a.bin expect.bin && truncate -s 64M expect.bin
$PY -c 'import sys; f = open("expect.bin", "r+b"); f.seek(16 << 20); f.write(b"\x42" * (1 << 20))'
qemu-img compare --object "tls-creds-x509,id=tls0,endpoint=client,dir=$WORK/client" -f raw expect.bin \
  "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"path\":\"$SOCK\",\"export\":\"origin\",\"tls-creds\":\"tls0\",\"tls-hostname\":\"localhost\"}}" \
  | grep -q "identical" || fail "qemu-img compare over TLS (unix)"
# A client that does not trust the server's CA fails; the server goes on.
mkdir -p distrust && cp rogue-ca.pem distrust/ca-cert.pem
expect_fail "" timeout 10 nbdinfo "nbds://localhost:$PORT/origin?tls-certificates=$WORK/distrust"
nbdinfo --size "$TLSU&$CERTS" >/dev/null || fail "server hurt by a failed client"
stop_serve

# ---- --tls-verify-peer: client certificates signed by ca-cert.pem only
start_serve --tls require --tls-certificates "$WORK/server" --tls-verify-peer
nbdinfo --size "$TLSU&$CERTS" >/dev/null || fail "a client with a good certificate was refused"
expect_fail "" timeout 10 nbdinfo --size "$TLSU&tls-certificates=$WORK/nocert"
expect_fail "" timeout 10 nbdinfo --size "$TLSU&tls-certificates=$WORK/rogue"
grep -q "TLS handshake failed" serve.log || fail "failed handshakes are not logged"
grep -q ", client 'CN=client1" serve.log || fail "the client's certificate name is not logged"
stop_serve

# ---- PSK: a wrong key fails while good clients go on; eight TLS clients at once
start_serve --tls require --tls-psk "$WORK/psk/keys.psk"
PSKU="nbds+unix://alice@/origin?socket=$SOCK&tls-psk-file=$WORK/psk/keys.psk"
# A good client holds a connection open across the bad attempts.
$PY - "$SOCK" "$WORK/psk/keys.psk" "$WORK/wrongpsk/keys.psk" <<'PY'
import nbd, subprocess, sys
sock, good, wrong = sys.argv[1:]
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_psk_file(good)
h.set_tls_username("bob")
h.connect_uri("nbd+unix:///origin?socket=" + sock)
h.pwrite(b"\x17" * 65536, 40 << 20)
for user, keys in (("alice", wrong), ("mallory", good)):
    r = subprocess.run(["nbdinfo", "--size", "nbds+unix://%s@/origin?socket=%s&tls-psk-file=%s" % (user, sock, keys)],
                       capture_output=True, timeout=20)
    assert r.returncode != 0, "a wrong key or user got in: %s" % user
assert h.pread(65536, 40 << 20) == b"\x17" * 65536
h.flush()
h.shutdown()
PY
grep -q "PSK user 'bob'" serve.log || fail "the PSK user is not logged"
# Keys are read per handshake: one added while serve runs works at once.
psktool -u carol -p carol.psk >/dev/null 2>&1
expect_fail "" timeout 10 nbdinfo --size "nbds+unix://carol@/origin?socket=$SOCK&tls-psk-file=$WORK/carol.psk"
cat carol.psk >> psk/keys.psk
nbdinfo --size "nbds+unix://carol@/origin?socket=$SOCK&tls-psk-file=$WORK/carol.psk" >/dev/null \
  || fail "a PSK added to the file while serving is not accepted"
[ "$(grep -c 'TLS handshake failed' serve.log)" -ge 2 ] || fail "wrong PSK attempts not logged as failed handshakes"
ms status --json | $PY -c 'import json, sys; n = json.load(sys.stdin)["nbd"]; assert n["tls_handshake_failures"] >= 2 and n["tls"] == "require"' \
  || fail "status does not count failed TLS handshakes"
# Eight clients at once, each writing and checking its own 1 MiB.
$PY - "$SOCK" "$WORK/psk/keys.psk" <<'PY'
import nbd, os, sys, threading
sock, psk = sys.argv[1:]
errors = []
def client(i):
    try:
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(psk)
        h.set_tls_username("alice")
        h.connect_uri("nbd+unix:///origin?socket=" + sock)
        data = bytes([i + 1]) * (1 << 20)
        for k in range(4):
            h.pwrite(data[k << 18:(k + 1) << 18], (48 << 20) + (i << 20) + (k << 18))
        h.flush()
        assert h.pread(1 << 20, (48 << 20) + (i << 20)) == data
        h.shutdown()
    except Exception as e:
        errors.append("client %d: %s" % (i, e))
ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in ts: t.start()
for t in ts: t.join()
if errors: sys.exit("\n".join(errors))
PY
nbdcopy "$PSKU" psk-back.bin
cmp <(head -c 8M psk-back.bin) a.bin || fail "nbdcopy over TLS-PSK differs"
# qemu with tls-creds-psk (dir holds keys.psk).
qemu-io --object "tls-creds-psk,id=tls0,endpoint=client,dir=$WORK/psk,username=alice" --image-opts \
  "driver=raw,file.driver=nbd,file.path=$SOCK,file.export=origin,file.tls-creds=tls0" \
  -c 'read -P 0x42 16M 1M' | grep -q "read 1048576" || fail "qemu-io over TLS-PSK"
stop_serve

# ---- --tls on: TLS and plain clients on the same exports
start_serve --tls on --tls-psk "$WORK/psk/keys.psk"
$PY -c "
import nbd, sys
h = nbd.NBD(); h.set_uri_allow_local_file(True); h.set_tls(nbd.TLS_REQUIRE); h.connect_uri(sys.argv[1])
assert h.get_tls_negotiated()
h.pwrite(b'\x99' * (1 << 20), 20 << 20); h.flush(); h.shutdown()
" "$PSKU"
nbdinfo "$PSKU" | grep -q "with TLS" || fail "--tls on: no TLS for a client that asked"
nbdinfo "$(uri origin)" | grep -q "without TLS" || fail "--tls on: plain client refused"
qemu-io -f raw -c 'read -P 0x99 20M 1M' -c 'read -P 0x42 16M 1M' "$(uri origin)" | grep -c "read 1048576" \
  | grep -q 2 || fail "data written over TLS does not read back over plain"
stop_serve

# ---- The handshake deadline covers the TLS handshake; no plaintext after STARTTLS
start_serve --tls require --tls-psk "$WORK/psk/keys.psk" --handshake-timeout 1
$PY - "$SOCK" <<'PY'
import socket, struct, sys, time
def starttls(extra=b""):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    greeting = s.recv(18)
    assert greeting[:8] == b"NBDMAGIC", greeting
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454f5054, 5, 0) + extra)
    reply = b""
    while len(reply) < 20:
        reply += s.recv(20 - len(reply))
    assert struct.unpack(">QIII", reply)[2] == 1, "STARTTLS not ACKed"
    return s
# Silent after the ACK: closed at the 1 s deadline, not before, not long after.
s = starttls(); t0 = time.monotonic(); s.settimeout(5)
assert s.recv(1) == b"", "data instead of a close"
took = time.monotonic() - t0
assert 0.7 <= took <= 3, "closed after %.2f s" % took
# Plaintext sent right behind STARTTLS (an injection attempt): dropped.
s = starttls(struct.pack(">QII", 0x49484156454f5054, 3, 0)); s.settimeout(5); t0 = time.monotonic()
try:
    data = s.recv(100)
except ConnectionResetError:
    data = b""
assert data == b"" and time.monotonic() - t0 < 0.7, "plaintext after STARTTLS was not refused at once"
PY
grep -q "data after NBD_OPT_STARTTLS" serve.log || fail "injection after STARTTLS not logged"
nbdinfo --size "$PSKU" >/dev/null || fail "server hurt by the stalled handshakes"
stop_serve

# ---- Start-up errors name the file
expect_fail "nocert/server-cert.pem: No such file" ms serve store.img --nbd "unix:$SOCK" \
  --control "$MULTISNAP_CONTROL" --tls-certificates "$WORK/nocert"
mkdir -p nokey && cp server/server-cert.pem nokey/
expect_fail "nokey/server-key.pem: No such file" ms serve store.img --nbd "unix:$SOCK" \
  --control "$MULTISNAP_CONTROL" --tls-certificates "$WORK/nokey"
mkdir -p noca && cp server/server-*.pem noca/
expect_fail "needs the CA certificate" ms serve store.img --nbd "unix:$SOCK" \
  --control "$MULTISNAP_CONTROL" --tls-certificates "$WORK/noca" --tls-verify-peer
expect_fail "is not a directory" ms serve store.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" \
  --tls-certificates "$WORK/nosuchdir"
expect_fail "nosuch.psk" ms serve store.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" --tls-psk "$WORK/nosuch.psk"
printf 'alice:nothex\n' > bad.psk
expect_fail "bad.psk line 1" ms serve store.img --nbd "unix:$SOCK" --control "$MULTISNAP_CONTROL" --tls-psk "$WORK/bad.psk"
expect_fail "--tls-certificates DIR or --tls-psk FILE" ms serve store.img --nbd "unix:$SOCK" --tls on
expect_fail "not both" ms serve store.img --nbd "unix:$SOCK" --tls-psk "$WORK/psk/keys.psk" --tls-certificates "$WORK/server"
expect_fail "--tls off" ms serve store.img --nbd "unix:$SOCK" --tls off --tls-psk "$WORK/psk/keys.psk"
expect_fail "--tls-verify-peer goes with --tls-certificates" ms serve store.img --nbd "unix:$SOCK" --tls-verify-peer
expect_fail "--tls takes" ms serve store.img --nbd "unix:$SOCK" --tls maybe
[ ! -e "$SOCK" ] || fail "a refused serve left its socket behind"
echo "PASSED"
