#!/usr/bin/env bash
# Replication between two machines, as far as this machine allows: two network
# namespaces joined by a veth pair (10.77.0.1 <-> 10.77.0.2), a sender `serve`
# in A and a receiver `serve` in B, each with its own store and sockets.
#  1. full `send s1` piped over TCP with socat, A -> B;
#  2. incremental `send s2 --from s1 --compress`, the same way;
#  3. incremental `send s3 --from s2` through ssh to an sshd in B (SKIPPED, for
#     that part only, when sshd cannot run here).
# Every received snapshot is compared byte for byte (sha256 over NBD) with the
# sender's. The sender's store is range with 64K chunks, the receiver's bitmask
# with 16K chunks. Skipped (77) when not root, when `ip netns` does not work,
# or without socat.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "network namespaces need root"
need ip socat ss nbdcopy sha256sum timeout
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

NSA=ms-a-$$            # unique per run: parallel runs do not clash
NSB=ms-b-$$
IPA=10.77.0.1
IPB=10.77.0.2
PIDS=()                # every background process this test started
NS_MADE=()

netns_cleanup() {
  local rc=$?
  set +e  # under errexit the trap would stop at the first failing command, e.g. (exit $rc)
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for ns in "${NS_MADE[@]}"; do  # whatever still runs in our namespaces is ours
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "${NS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    for f in a/serve.log b/serve.log recv.*.err send.*.err ssh/sshd.log; do
      [ -s "$f" ] && { echo "---- $f (last 20 lines)"; tail -20 "$f"; }
    done
  fi
  (exit $rc); cleanup
}
trap netns_cleanup EXIT

# The namespaces and the veth pair (created straight into them, so its names
# never appear in the host's namespace).
ip netns add "$NSA" 2>netns.err || skip "ip netns add failed (no CAP_NET_ADMIN?): $(cat netns.err)"
NS_MADE+=("$NSA")
ip netns add "$NSB" 2>netns.err || skip "ip netns add failed: $(cat netns.err)"
NS_MADE+=("$NSB")
ip link add "msva$$" netns "$NSA" type veth peer name "msvb$$" netns "$NSB" 2>netns.err ||
  skip "cannot create a veth pair between namespaces: $(cat netns.err)"
ip -n "$NSA" addr add "$IPA/24" dev "msva$$"
ip -n "$NSB" addr add "$IPB/24" dev "msvb$$"
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set "msva$$" up
ip -n "$NSB" link set "msvb$$" up
ip netns exec "$NSA" true 2>netns.err || skip "ip netns exec does not work here: $(cat netns.err)"
for i in $(seq 100); do
  ip -n "$NSA" -o link show "msva$$" | grep -q 'state UP' && break
  [ "$i" -lt 100 ] || fail "veth msva$$ did not come up"
  sleep 0.05
done

inA() { ip netns exec "$NSA" "$@"; }
inB() { ip netns exec "$NSB" "$@"; }
uriA() { echo "nbd+unix:///$1?socket=$WORK/a/nbd.sock"; }

wait_for_listen() {  # wait_for_listen NS PORT PID: polls until PORT listens in NS
  for _ in $(seq 200); do
    ss -N "$1" -Hltn "sport = :$2" | grep -q . && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# Two stores of the same volume size, one served in each namespace.
mkdir a b
ms create a/origin.img a/store.img --origin-size 64M --chunk-size 64K --format range --store-size 512M >/dev/null
ms create b/origin.img b/store.img --origin-size 64M --chunk-size 16K --format bitmask --store-size 512M >/dev/null
declare -A SERVE
for side in a b; do
  ns=$NSA; [ $side = b ] && ns=$NSB
  ip netns exec "$ns" "$MULTISNAP" serve "$WORK/$side/store.img" --nbd "unix:$WORK/$side/nbd.sock" \
    --control "$WORK/$side/ctl" >>"$side/serve.log" 2>&1 &
  SERVE[$side]=$!
  PIDS+=($!)
done
for side in a b; do wait_for_socket "$WORK/$side/nbd.sock"; wait_for_socket "$WORK/$side/ctl"; done
msA() { MULTISNAP_CONTROL=$WORK/a/ctl inA "$MULTISNAP" "$@"; }
msB() { MULTISNAP_CONTROL=$WORK/b/ctl inB "$MULTISNAP" "$@"; }

write_random() {  # write_random SEED: random writes, zeroes and patterns on A's origin
  inA $PY - "$(uriA origin)" "$1" <<'PY'
import nbd, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
size = h.get_size()
for _ in range(60):
    length = rng.choice([4096, 65536, 3 * 65536, 1 << 20])
    off = rng.randrange((size - length) // 4096) * 4096
    r = rng.random()
    if r < 0.7:
        h.pwrite(rng.randbytes(length), off)
    elif r < 0.85:
        h.zero(length, off)
    else:
        h.pwrite(bytes([rng.randrange(256)]) * length, off)
h.flush()
h.shutdown()
PY
}

sum_of() {  # sum_of a|b EXPORT: sha256 of the whole export, read in that side's namespace
  local ns=$NSA sock=$WORK/a/nbd.sock
  [ "$1" = b ] && { ns=$NSB; sock=$WORK/b/nbd.sock; }
  ip netns exec "$ns" nbdcopy "nbd+unix:///$2?socket=$sock" - | sha256sum | cut -d' ' -f1
}

same() {  # same SNAPSHOT_A SNAPSHOT_B: byte-identical over NBD
  local x y
  x=$(sum_of a "snapshot/$1")
  y=$(sum_of b "snapshot/$2")
  [ "$x" = "$y" ] || fail "receiver's snapshot $2 ($y) differs from sender's $1 ($x)"
  echo "  $1 on A == $2 on B (sha256 $x)"
}

uuid_of() {  # uuid_of a|b NAME
  local out
  if [ "$1" = a ]; then out=$(msA snapshot list --json); else out=$(msB snapshot list --json); fi
  echo "$out" | $PY -c 'import json, sys
d = json.load(sys.stdin)
s = d["snapshots"] if isinstance(d, dict) else d
print([x["uuid"] for x in s if x["name"] == sys.argv[1]][0])' "$2"
}

same_uuid() {  # same_uuid NAME: the received snapshot kept the sender's uuid
  local x y
  x=$(uuid_of a "$1")
  y=$(uuid_of b "$1")
  [ -n "$x" ] && [ "$x" = "$y" ] || fail "$1 has uuid '$y' on the receiver, '$x' on the sender"
}

# socat_round N SNAPSHOT [send args...]: send in A | socat -> TCP -> socat | receive in B.
# Sets RID to the ID receive printed.
RID=
socat_round() {
  local n=$1 snap=$2 port=$((9000 + $1)); shift 2
  timeout 30 ip netns exec "$NSB" env MULTISNAP_CONTROL="$WORK/b/ctl" bash -c \
    'set -o pipefail; socat -u TCP-LISTEN:'"$port"',bind='"$IPB"',reuseaddr STDOUT | "$0" receive' \
    "$MULTISNAP" >"recv.$n.out" 2>"recv.$n.err" &
  local lpid=$!
  PIDS+=($lpid)
  wait_for_listen "$NSB" "$port" "$lpid" || fail "round $n: the socat listener in $NSB did not start: $(cat "recv.$n.err")"
  local rc=0
  timeout 30 ip netns exec "$NSA" env MULTISNAP_CONTROL="$WORK/a/ctl" bash -c \
    'set -o pipefail; "$0" send "$@" | socat -u STDIN TCP:'"$IPB:$port" "$MULTISNAP" "$snap" "$@" \
    2>"send.$n.err" || rc=$?
  local rrc=0
  wait "$lpid" || rrc=$?
  [ $rc -eq 0 ] && [ $rrc -eq 0 ] || fail "round $n: send $snap $* | socat exited with $rc ($(cat "send.$n.err")), socat | receive with $rrc ($(cat "recv.$n.err"))"
  grep -Eqx '[0-9]+' "recv.$n.out" || fail "round $n: receive printed '$(cat "recv.$n.out")', not an ID"
  RID=$(cat "recv.$n.out")
}

# Round 1: a full stream of s1.
head -c 16M /dev/urandom >data.bin
inA nbdcopy data.bin "$(uriA origin)"
write_random 1
msA snapshot create --name s1 >/dev/null
socat_round 1 s1; id1=$RID
echo "round 1: full send s1 over TCP $IPA -> $IPB: received as snapshot $id1"
same s1 "$id1"
same_uuid s1

# Round 2: an incremental, compressed stream of s2 against s1.
write_random 2
msA snapshot create --name s2 >/dev/null
socat_round 2 s2 --from s1 --compress; id2=$RID
echo "round 2: send s2 --from s1 --compress over TCP: received as snapshot $id2"
same s2 "$id2"
same s1 "$id1"   # the earlier one is untouched
same_uuid s2

# Round 3: through ssh to an sshd in B, if one can run here.
ssh_round() {
  command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || { WHY="ssh or ssh-keygen is not installed"; return 1; }
  [ -x /usr/sbin/sshd ] || { WHY="/usr/sbin/sshd is not installed"; return 1; }
  mkdir -p ssh
  ssh-keygen -q -t ed25519 -N '' -f ssh/host_key -C multisnap-test-host >/dev/null &&
    ssh-keygen -q -t ed25519 -N '' -f ssh/client_key -C multisnap-test-client >/dev/null &&
    cp ssh/client_key.pub ssh/authorized_keys || { WHY="ssh-keygen failed"; return 1; }
  # sshd's privilege separation directory (what the openssh-server service
  # creates at boot); left in place: another run may be using it.
  [ -d /run/sshd ] || mkdir -m 0755 /run/sshd 2>/dev/null || { WHY="cannot create /run/sshd (sshd's privilege separation directory)"; return 1; }
  # StrictModes no: the keys live under /tmp (mode 1777), which it rejects.
  cat >ssh/sshd_config <<EOF
Port 22
ListenAddress $IPB
HostKey $WORK/ssh/host_key
AuthorizedKeysFile $WORK/ssh/authorized_keys
PidFile $WORK/ssh/sshd.pid
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
LogLevel VERBOSE
EOF
  WHY=$(inB /usr/sbin/sshd -t -f "$WORK/ssh/sshd_config" 2>&1) || { WHY="sshd -t refuses the config: $WHY"; return 1; }
  inB /usr/sbin/sshd -D -e -f "$WORK/ssh/sshd_config" 2>ssh/sshd.log &
  SSHD_PID=$!
  PIDS+=($SSHD_PID)
  local spid=$SSHD_PID
  wait_for_listen "$NSB" 22 "$spid" || { WHY="sshd did not listen on $IPB:22: $(tail -3 ssh/sshd.log)"; return 1; }
  WHY=$(timeout 20 ip netns exec "$NSA" ssh "${SSH[@]}" true 2>&1) ||
    { WHY="ssh root@$IPB true failed: $WHY / sshd: $(tail -3 ssh/sshd.log)"; return 1; }
  return 0
}
SSH=(-F /dev/null -i "$WORK/ssh/client_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
     -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=10 "root@$IPB")
write_random 3
msA snapshot create --name s3 >/dev/null
WHY=
SSHD_PID=
if ssh_round; then
  rc=0
  remote="MULTISNAP_CONTROL=$(printf %q "$WORK/b/ctl") $(printf %q "$MULTISNAP") receive"
  timeout 30 ip netns exec "$NSA" env MULTISNAP_CONTROL="$WORK/a/ctl" bash -c \
    'set -o pipefail; "$0" send s3 --from s2 | ssh "$@"' "$MULTISNAP" "${SSH[@]}" "$remote" \
    >recv.3.out 2>recv.3.err || rc=$?
  [ $rc -eq 0 ] || fail "round 3: send s3 --from s2 | ssh ... receive exited with $rc: $(cat recv.3.err)"
  grep -Eqx '[0-9]+' recv.3.out || fail "round 3: receive printed '$(cat recv.3.out)', not an ID"
  id3=$(cat recv.3.out)
  echo "round 3: send s3 --from s2 | ssh root@$IPB multisnap receive: received as snapshot $id3"
  same s3 "$id3"
  same s2 "$id2"
  same_uuid s3
  kill -TERM "$SSHD_PID"; wait "$SSHD_PID" 2>/dev/null || true
  ssh_result="done"
else
  echo "SKIPPED (ssh round only): $WHY"
  ssh_result="SKIPPED"
fi

# Both serves stop cleanly and both stores check clean.
for side in a b; do
  kill -TERM "${SERVE[$side]}"
  rc=0; wait "${SERVE[$side]}" || rc=$?
  [ $rc -eq 0 ] || fail "serve $side exited with $rc after SIGTERM"
  ms check "$side/store.img" >"check.$side" 2>&1 || fail "check of $side/store.img: $(cat "check.$side")"
done
echo "PASSED: replication between namespaces $NSA and $NSB over socat (full, incremental+compress); ssh round: $ssh_result"
