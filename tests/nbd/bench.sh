#!/usr/bin/env bash
# Compares the multisnap NBD server (nbd_memory_server, a MemoryBackend
# export) with nbdkit's memory and file plugins: fio --ioengine=nbd, 4 KiB
# random reads and writes, iodepth 16, one job on one connection. Each
# server gets fio on CPU 0 and itself on CPU 1 (on a 2-core machine: one core
# each). Every figure is the median of --runs runs; the export is filled
# first so reads return real data.
#
# Usage: tests/nbd/bench.sh BUILD_DIR [--size 1G] [--runtime 10] [--runs 3] [--no-pin]
#   BUILD_DIR: a release build with tests (it has tests/nbd/nbd_memory_server)
# Needs fio (with the nbd engine), nbdkit and python3.
set -euo pipefail

build=${1:?usage: bench.sh BUILD_DIR [--size 1G] [--runtime 10] [--runs 3] [--no-pin]}
shift
size=1G runtime=10 runs=3 pin=1
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --no-pin) pin=0; shift ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
server_bin=$build/tests/nbd/nbd_memory_server
[ -x "$server_bin" ] || { echo "bench.sh: $server_bin is missing (ninja nbd_memory_server)" >&2; exit 2; }
for t in fio nbdkit python3; do
  command -v $t >/dev/null || { echo "bench.sh: $t is missing" >&2; exit 2; }
done

work=$(mktemp -d /tmp/nbdbench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

on_cpu() { if [ $pin = 1 ]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
# Starts a server on CPU 1 in the background; $pid is the server itself
# (taskset execs it), so kill reaches it.
start_server() {
  if [ $pin = 1 ]; then taskset -c 1 "$@" >/dev/null & else "$@" >/dev/null & fi
  pid=$!
}
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

fio_iops() { # uri rw
  on_cpu 0 fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=16 \
      --numjobs=1 --size="$size" --time_based --runtime="$runtime" --randrepeat=0 \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="write" if j["write"]["io_bytes"] else "read"; print(int(j[k]["iops"]))'
}
median() { python3 -c 'import statistics,sys; print(int(statistics.median(map(int, sys.argv[1:]))))' "$@"; }

declare -A R
measure() { # label uri
  on_cpu 0 fio --name=fill --ioengine=nbd --uri="$2" --rw=write --bs=1M --size="$size" \
      --iodepth=4 --buffer_pattern=0x5a >/dev/null 2>&1
  for rw in randread randwrite; do
    local xs=()
    for _ in $(seq "$runs"); do xs+=("$(fio_iops "$2" "$rw")"); done
    R[$1.$rw]=$(median "${xs[@]}")
    echo "  $1 $rw: ${xs[*]} -> ${R[$1.$rw]}" >&2
  done
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; rm -f "$work"/*.sock; }

echo "multisnap nbd_memory_server" >&2
start_server "$server_bin" --listen "unix:$work/m.sock" --size "$size"
wait_sock "$work/m.sock"
measure multisnap "nbd+unix:///origin?socket=$work/m.sock"
stop_server

echo "nbdkit memory" >&2
start_server nbdkit -f -U "$work/k.sock" memory "$size"
wait_sock "$work/k.sock"
measure nbdkit-memory "nbd+unix:///?socket=$work/k.sock"
stop_server

echo "nbdkit file (on /dev/shm)" >&2
img=$(mktemp /dev/shm/nbdbench.XXXXXX)
truncate -s "$size" "$img"
start_server nbdkit -f -U "$work/f.sock" file "$img"
wait_sock "$work/f.sock"
measure nbdkit-file "nbd+unix:///?socket=$work/f.sock"
stop_server
rm -f "$img"

printf '%-14s %12s %12s %12s %12s\n' server randread_iops randwrite_iops ms/this_read ms/this_write
for s in multisnap nbdkit-memory nbdkit-file; do
  printf '%-14s %12s %12s %12s %12s\n' "$s" "${R[$s.randread]}" "${R[$s.randwrite]}" \
    "$(python3 -c "print(f'{${R[multisnap.randread]}/${R[$s.randread]}:.2f}')")" \
    "$(python3 -c "print(f'{${R[multisnap.randwrite]}/${R[$s.randwrite]}:.2f}')")"
done
echo "(ms/this: multisnap IOPS divided by this server's IOPS)"
