#!/usr/bin/env bash
# NBD over TLS against plain NBD, same daemon, same run: fio (nbd engine,
# queue depth 16, 8 s each) 4 KiB overwrites, 4 KiB origin reads, 4 KiB
# reads of a snapshot whose chunks are in the store, and 1 MiB sequential
# reads, once over a plain Unix socket URI and once over nbds+unix (X.509,
# certificates made here with certtool; libnbd finds the client's in
# $HOME/.pki/libnbd, since fio's engine may not name local files in a URI).
# Prints each workload's plain and TLS rate and their ratio.
#
# Usage: bench/tls.sh [--size 1G]
# Needs: fio, certtool (gnutls-bin); builds build-release/multisnap if needed.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
size=1G
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "tls.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for t in fio certtool; do command -v $t >/dev/null || { echo "tls.sh: $t is missing (scripts/deps.sh)" >&2; exit 2; }; done
cmake -S "$src" -B "$src/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$src/build-release" multisnap >/dev/null
M=$src/build-release/multisnap
work=$(mktemp -d /tmp/multisnap-tls-XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"

tmpl() { printf '%s\n' "$@" > tmpl.info; }
tmpl 'cn = bench CA' ca cert_signing_key 'expiration_days = 2'
certtool --generate-privkey --outfile ca-key.pem 2>/dev/null
certtool --generate-self-signed --load-privkey ca-key.pem --template tmpl.info --outfile ca-cert.pem 2>/dev/null
issue() {  # DIR NAME KIND
  mkdir -p "$1"; cp ca-cert.pem "$1/"
  tmpl 'cn = localhost' "$3" encryption_key signing_key 'expiration_days = 2' 'dns_name = localhost'
  certtool --generate-privkey --outfile "$1/$2-key.pem" 2>/dev/null
  certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \
    --load-privkey "$1/$2-key.pem" --template tmpl.info --outfile "$1/$2-cert.pem" 2>/dev/null
}
issue server server tls_www_server
issue home/.pki/libnbd client tls_www_client

"$M" create origin.img store.img --origin-size "$size" >/dev/null
"$M" serve store.img --nbd "unix:$work/s.sock" --control "$work/c.ctl" --tls on --tls-certificates "$work/server" \
  --log-level warn &
pid=$!
for _ in $(seq 200); do [ -S "$work/c.ctl" ] && break; sleep 0.05; done
export MULTISNAP_CONTROL=$work/c.ctl
plain="nbd+unix:///origin?socket=$work/s.sock"
fio --name=fill --ioengine=nbd --uri="$plain" --rw=write --bs=1M --size="$size" --iodepth=4 --buffer_pattern=0x5a >/dev/null 2>&1
sid=$("$M" snapshot create); sid=${sid##* }
fio --name=copy --ioengine=nbd --uri="$plain" --rw=write --bs=1M --size="$size" --iodepth=4 --buffer_pattern=0xa5 >/dev/null 2>&1

rate() {  # uri rw bs: IOPS for 4k, MiB/s for 1M
  HOME=$work/home fio --name=x --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --size="$size" --iodepth=16 \
      --time_based --runtime=8 --randrepeat=0 --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="write" if j["write"]["io_bytes"] else "read"; print(int(j[k]["iops"]) if sys.argv[1]=="4k" else int(j[k]["bw"]/1024))' "$3"
}
printf '%-34s %12s %12s %8s\n' workload plain tls "tls/plain"
for w in "4 KiB overwrite (IOPS):origin:randwrite:4k" "4 KiB origin read (IOPS):origin:randread:4k" \
         "4 KiB snapshot read (IOPS):snapshot/$sid:randread:4k" "1 MiB sequential read (MiB/s):origin:read:1M"; do
  IFS=: read -r name export rw bs <<<"$w"
  p=$(rate "nbd+unix:///$export?socket=$work/s.sock" "$rw" "$bs")
  t=$(rate "nbds+unix:///$export?socket=$work/s.sock" "$rw" "$bs")
  printf '%-34s %12s %12s %8s\n' "$name" "$p" "$t" "$(/usr/bin/python3 -c "print('%.2f' % ($t / max(1, $p)))")"
done
