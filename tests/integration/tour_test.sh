#!/usr/bin/env bash
# Runs the README's five-minute tour verbatim (its first sh block), so every
# command in it keeps working: each must succeed, and the comparisons in it
# must find the volumes identical.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
need nbdcopy nbdinfo qemu-io qemu-img
README=$HERE/../../README.md
awk '/^## A five-minute tour/ {tour=1} tour && /^```sh/ {inblock=1; next} inblock && /^```/ {exit} inblock {print}' \
  "$README" > tour.sh
[ -s tour.sh ] || fail "no tour found in $README"
grep -q 'snapshot create' tour.sh || fail "the extracted tour looks wrong"
# The tour backgrounds serve with &; run it with errexit, then stop what it started.
env -u MULTISNAP_CONTROL M=$MULTISNAP bash -c 'set -euo pipefail; source ./tour.sh; echo TOUR-DONE; kill %1 2>/dev/null; wait' >tour.out 2>&1 \
  || { tail -30 tour.out; fail "the README tour failed"; }
grep -q TOUR-DONE tour.out || { tail -30 tour.out; fail "the README tour did not finish"; }
grep -q "Images are identical" tour.out || { tail -30 tour.out; fail "the tour's comparisons did not all succeed"; }
[ "$(grep -c 'Images are identical' tour.out)" -ge 3 ] || { cat tour.out; fail "a comparison of the tour is missing"; }
ms check store.img | grep -q clean || fail "check after the tour"
ms check replica.img | grep -q clean || fail "check of the replica after the tour"
echo "tour: ok"
