#!/usr/bin/env bash
# multisnap policy set --on-full: a writer rewriting a 32M origin whose
# store has room for 24M of copies, with a snapshot every second;
# delete-oldest keeps the writer running, error fails it with ENOSPC.
source "$(dirname "$0")/lib.sh"
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

writer() {  # prints ok or the error
  $PY - "$(uri origin)" <<'PY'
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size, chunk = h.get_size(), 1 << 20
end = time.time() + 6
try:
    while time.time() < end:
        for off in range(0, size, chunk):
            h.pwrite(os.urandom(chunk), off)
    h.flush()
    print("ok")
except nbd.Error as e:
    print("error", e.errno, e)
PY
}
for mode in error delete-oldest; do
  rm -f origin.img store.img
  create_store origin.img store.img --origin-size 32M --store-size 28M --metadata-size 4M >/dev/null
  start_serve
  ms policy set --every 1s --keep-last 100 --on-full $mode >/dev/null
  sleep 1.2
  result=$(writer)
  if [ $mode = error ]; then
    echo "$result" | grep -q "^error .*ENOSPC" || fail "on-full error: the writer did not fail with ENOSPC: $result"
  else
    [ "$result" = ok ] || fail "on-full delete-oldest: the writer failed: $result"
    grep -q "the store is full: deleted the oldest automatic snapshot" serve.log || fail "no deletion was logged"
  fi
  stop_serve
  ms check store.img | grep -q clean || fail "check after on-full $mode"
done
echo "policy on-full test passed ($FORMAT)"
