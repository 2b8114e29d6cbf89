#!/usr/bin/env bash
# Replication through the real CLI (replication_test.py): a randomized chain
# of full and incremental sends into receivers of the other store format and
# another chunk size, interrupted receives resumed or aborted, and refusals.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
$PY -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
$PY "$HERE/replication_test.py" "$MULTISNAP" "$WORK" "$FORMAT"
