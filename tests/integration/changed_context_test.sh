#!/usr/bin/env bash
# The NBD meta context multisnap:changed:<BASE> (changed_context_test.py):
# maps of origin and snapshot exports against several bases, checked chunk by
# chunk against what was written and what the volumes read.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
need nbdinfo
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
$PY "$HERE/changed_context_test.py" "$MULTISNAP" "$WORK" "$FORMAT"
