#!/usr/bin/env bash
# serve --metrics: the Prometheus endpoint under load. Scrapes while NBD
# clients write the origin (first writes after a snapshot: copies and
# commits) and read a snapshot; the values must move, the text must pass
# `promtool check metrics` (promtool from Debian's prometheus package, unpacked
# without installing when absent; skipped with a reason when that fails too),
# and anything but GET /metrics gets 404 or 405.
source "$(dirname "$0")/lib.sh"
need qemu-io nbdcopy curl
create_store origin.img store.img --origin-size 256M >/dev/null
start_serve --metrics tcp:127.0.0.1:0
PORT=$(grep -o 'metrics on http://127.0.0.1:[0-9]*' serve.log | head -1 | sed 's/.*://')
[ -n "$PORT" ] || fail "serve did not say where the metrics are"
URL=http://127.0.0.1:$PORT/metrics
scrape() { curl -sf --max-time 10 "$URL"; }
value() {  # value FILE 'name{labels}' -> the sample's value
  awk -v k="$2" '$1 == k {print $2; found=1} END {if (!found) print "missing"}' "$1"
}

# Data on the origin first: chunks that are holes would get zero mappings,
# not copies.
qemu-io -f raw -c 'write -P 0x22 0 64M' "$(uri origin)" >/dev/null
scrape > before.txt
ms snapshot create --name base >/dev/null
# Load: origin writes (each chunk copied once for the snapshot) and a full
# read of the snapshot, while scraping.
qemu-io -f raw -c 'write -P 0x11 0 64M' -c 'flush' "$(uri origin)" >/dev/null &
writer=$!
nbdcopy "$(uri snapshot/base)" snap.img &
reader=$!
n=0
while kill -0 $writer 2>/dev/null || kill -0 $reader 2>/dev/null; do
  scrape > during.txt || fail "a scrape under load failed"
  n=$((n + 1))
done
wait $writer || fail "qemu-io failed"
wait $reader || fail "nbdcopy failed"
scrape > after.txt
echo "scrapes under load: $n"

moved() {  # moved 'sample' : after > before
  local a b
  b=$(value before.txt "$1"); a=$(value after.txt "$1")
  [ "$a" != missing ] || fail "no sample $1"
  $PY -c "import sys; sys.exit(0 if float('$a') > float('$b' if '$b' != 'missing' else 0) else 1)" \
    || fail "$1 did not move: $b -> $a"
}
moved 'multisnap_requests_total{export="origin",op="write"}'
moved 'multisnap_request_bytes_total{export="origin",op="write"}'
moved 'multisnap_requests_total{export="snapshot",op="read"}'
moved 'multisnap_request_bytes_total{export="snapshot",op="read"}'
moved 'multisnap_requests_total{export="origin",op="flush"}'
moved 'multisnap_request_duration_seconds_count{export="origin",op="write"}'
moved 'multisnap_request_duration_seconds_bucket{export="origin",op="write",le="+Inf"}'
moved 'multisnap_copy_duration_seconds_count'
moved 'multisnap_commit_duration_seconds_count'
moved 'multisnap_chunks_copied_total'
moved 'multisnap_commits_total'
moved 'multisnap_store_data_used_bytes'
moved 'multisnap_snapshots'
moved 'multisnap_nbd_connections_total'
delta() { echo $(( $(value after.txt "$1") - $(value before.txt "$1") )); }
[ "$(delta 'multisnap_request_bytes_total{export="origin",op="write"}')" = 67108864 ] \
  || fail "origin write bytes: $(delta 'multisnap_request_bytes_total{export="origin",op="write"}') more, expected 64 MiB"
[ "$(delta multisnap_chunks_copied_total)" = 1024 ] \
  || fail "chunks copied: $(delta multisnap_chunks_copied_total) more, expected 1024 (64 MiB of 64 KiB chunks)"
# Buckets are cumulative and end at the count.
$PY - <<'PY'
import re
rows = [l.split() for l in open("after.txt") if l.startswith('multisnap_request_duration_seconds_bucket{export="origin",op="write"')]
vals = [float(v) for _, v in rows]
assert vals == sorted(vals), vals
count = [l.split()[1] for l in open("after.txt") if l.startswith('multisnap_request_duration_seconds_count{export="origin",op="write"}')][0]
assert vals[-1] == float(count), (vals[-1], count)
PY

# Only GET /metrics.
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@"; }
[ "$(code "http://127.0.0.1:$PORT/")" = 404 ] || fail "/ is not 404"
[ "$(code "http://127.0.0.1:$PORT/metricsx")" = 404 ] || fail "/metricsx is not 404"
[ "$(code -X POST "$URL")" = 405 ] || fail "POST is not 405"
curl -sf -D headers.txt -o /dev/null "$URL"
grep -qi '^Connection: close' headers.txt || fail "no Connection: close"
grep -qi '^Content-Type: text/plain; version=0.0.4' headers.txt || fail "wrong Content-Type"
# A client that says nothing does not stop the next scrape for long.
$PY -c "import socket,time; s=socket.create_connection(('127.0.0.1',$PORT)); time.sleep(7)" &
sleep 0.5
start=$(date +%s)
scrape >/dev/null || fail "scrape after a silent client failed"
[ $(( $(date +%s) - start )) -le 6 ] || fail "a silent client held the scrape more than its 5 s"
# Nor does an endless request line.
$PY -c "
import socket
s = socket.create_connection(('127.0.0.1', $PORT))
try:
    s.sendall(b'GET /' + b'a' * 20000)
    s.shutdown(socket.SHUT_WR)
except OSError:
    pass
print(s.recv(100).split(b'\r\n')[0].decode())" > big.txt
grep -q "431" big.txt || fail "an oversized request got: $(cat big.txt)"

# promtool: installed, or taken out of Debian's prometheus package without
# installing it (installing would start a Prometheus server where systemd
# runs); kept in a cache directory for later runs.
promtool_bin() {
  if [ -z "${MULTISNAP_FETCH_PROMTOOL:-}" ] && command -v promtool >/dev/null; then command -v promtool; return; fi
  local cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/multisnap/prometheus
  if [ ! -x "$cache/usr/bin/promtool" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    mkdir -p "$cache/deb"
    (cd "$cache/deb" && apt-get download prometheus >/dev/null 2>&1) || true
    local deb
    deb=$(ls "$cache"/deb/prometheus_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] && dpkg-deb -x "$deb" "$cache" 2>/dev/null || true
  fi
  [ -x "$cache/usr/bin/promtool" ] && echo "$cache/usr/bin/promtool"
}
PROMTOOL=$(promtool_bin || true)
if [ -n "$PROMTOOL" ]; then
  "$PROMTOOL" check metrics < after.txt || fail "promtool check metrics failed"
  echo "promtool check metrics ($PROMTOOL): ok"
else
  echo "SKIPPED part: promtool is not installed and Debian's prometheus package could not be fetched; the format was not checked by promtool"
fi
stop_serve
echo "metrics: ok"
