#!/usr/bin/env bash
# multisnap policy set/show/clear with a real serve: automatic snapshots
# every second pruned to the newest 3, manual snapshots untouched, the policy
# kept across a restart of serve, clear stopping it. (--on-full:
# policy_full_test.sh.) Mostly waiting for the schedule, so it takes no
# lock in ctest and runs beside the other tests.
source "$(dirname "$0")/lib.sh"
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"

for c in "policy set" "policy show" "policy clear"; do
  ms $c --help | grep -q -i usage || fail "no help for $c"
done
expect_fail "no multisnap is serving" ms policy show

create_store origin.img store.img --origin-size 64M >/dev/null
start_serve
ms policy show | grep -q "no snapshot policy" || fail "a new store has a policy"
[ "$(ms policy show --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["policy"])')" = None ] \
  || fail "policy show --json without a policy"

# Refusals change nothing.
expect_fail "not a duration" ms policy set --every 5x --keep-last 3
expect_fail "must keep something" ms policy set --every 1h
expect_fail "error or delete-oldest" ms policy set --keep-last 3 --on-full panic
expect_fail "prefix" ms policy set --keep-last 3 --prefix 'a b'
expect_fail "0 or more" ms policy set --keep-last -2
# Every field of the wrong JSON type is an invalid-argument answer, not a crash.
$PY - "$MULTISNAP_CONTROL" <<'PY' || fail "policy-set with fields of the wrong type"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
bad = [{"every": [1]}, {"every": {}}, {"every": True}, {"every": -5}, {"every": 1.5}, {"every": "5 m"},
       {"keep_last": "3"}, {"keep_last": 3.5}, {"keep_last": -1}, {"keep_last": True}, {"keep_daily": [7]},
       {"keep_weekly": 10**12}, {"prefix": 5}, {"prefix": ""}, {"prefix": "x" * 48}, {"on_full": True},
       {"on_full": "panic"}, {"keep-last": 3}, {"bogus": 1}]
for fields in bad:
    req = {"command": "policy-set", "keep_last": 3}
    req.update(fields)
    f.write(json.dumps(req) + "\n"); f.flush()
    a = json.loads(f.readline())
    assert a["ok"] is False and a["error"]["code"] == "invalid-argument", (req, a)
f.write(json.dumps({"command": "policy-show"}) + "\n"); f.flush()
assert json.loads(f.readline())["policy"] is None
PY
ms policy show | grep -q "no snapshot policy" || fail "a refused policy set stored something"

ms snapshot create --name before >/dev/null
ms policy set --every 1s --keep-last 3 >/dev/null
ms snapshot create --name during >/dev/null
sleep 5.5  # about 5 taken: at least one pruned

autos() { ms snapshot list --json | $PY -c '
import json, re, sys
print(" ".join(s["name"] for s in json.load(sys.stdin) if s["name"] and re.fullmatch(r"auto-\d{8}T\d{6}Z", s["name"])))'; }
# Each take is followed by its prune a moment later: a look that falls
# between the two sees 4 for an instant, so look again before failing (a
# policy that does not prune stays at 4 or more).
for _ in 1 2 3 4 5; do
  n=$(autos | wc -w)
  date +%s.%N > show.time  # when show.json was asked for (the checks below may take a while)
  ms policy show --json > show.json
  [ "$n" = 3 ] && [ "$($PY -c 'import json; print(json.load(open("show.json"))["automatic_snapshots"])')" = 3 ] && break
  sleep 0.2
done
[ "$n" = 3 ] || fail "$n automatic snapshots after 5 s, not 3: $(autos)"
for m in before during; do ms snapshot list | grep -q " $m " || fail "manual snapshot $m was pruned"; done

$PY - <<'PY' || fail "policy show --json: $(cat show.json)"
import json, datetime
a = json.load(open("show.json"))
p = a["policy"]
assert p["every"] == "1s" and p["every_seconds"] == 1, p
assert p["keep_last"] == 3 and p["keep_hourly"] == p["keep_daily"] == p["keep_weekly"] == p["keep_monthly"] == 0, p
assert p["prefix"] == "auto" and p["on_full"] == "error", p
assert a["automatic_snapshots"] == 3, a
now = datetime.datetime.fromtimestamp(float(open("show.time").read()), datetime.timezone.utc)
due = datetime.datetime.fromisoformat(a["next_due"].replace("Z", "+00:00"))
assert -1 <= (due - now).total_seconds() <= 3, (due, now)
set_at = datetime.datetime.fromisoformat(p["set_at"].replace("Z", "+00:00"))
assert 4 <= (now - set_at).total_seconds() <= 30, (set_at, now)
PY
ms policy show | grep -q "every 1s" || fail "policy show"

# A restart of serve: the policy is in the store.
before_restart=$(autos)
stop_serve
start_serve
ms policy show --json > show2.json
$PY -c 'import json,sys; a,b=(json.load(open(f))["policy"] for f in sys.argv[1:]); assert a==b,(a,b)' show.json show2.json \
  || fail "the policy changed across a restart"
sleep 2.5
for _ in 1 2 3 4 5; do  # between a take and its prune there are 4 for a moment, as above
  n=$(autos | wc -w)
  [ "$n" = 3 ] && break
  sleep 0.2
done
[ "$n" = 3 ] || fail "$n automatic snapshots after the restart, not 3"
[ "$(autos)" != "$before_restart" ] || fail "no automatic snapshot after the restart"

# Clear: nothing is taken or pruned any more; what was taken stays.
ms policy clear | grep -q "cleared" || fail "policy clear"
left=$(autos)
sleep 2.5  # two periods
[ "$(autos)" = "$left" ] || fail "automatic snapshots changed after policy clear: $left -> $(autos)"
ms policy show | grep -q "no snapshot policy" || fail "policy show after clear"
ms policy clear | grep -q "no snapshot policy was set" || fail "a second clear"
stop_serve
ms check store.img | grep -q clean || fail "check after the policy"
echo "policy test passed ($FORMAT)"
