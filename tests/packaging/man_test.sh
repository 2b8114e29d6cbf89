#!/usr/bin/env bash
# The man page: rendered with man -l (else mandoc, else groff; skipped with a
# reason if none renders), it names every subcommand `multisnap --help`
# lists (and those of snapshot and policy), and every option each of them
# takes.
# Usage: man_test.sh BUILD_DIR /path/to/multisnap
set -euo pipefail
BUILD=$(readlink -f "$1") M=$(readlink -f "$2")
PAGE=$BUILD/packaging/multisnap.8
WORK=$(mktemp -d /tmp/multisnap-man-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }
[ -f "$PAGE" ] || skip "no man page was built (scdoc is not installed; scripts/deps.sh installs it)"
# Wide lines and no hyphenation, so names are never split.
if command -v man >/dev/null && MANWIDTH=1000 man -l "$PAGE" >"$WORK/page.txt" 2>"$WORK/err.txt" && [ -s "$WORK/page.txt" ]; then
  echo "rendered with man -l"
elif command -v mandoc >/dev/null && mandoc -T ascii -O width=1000 "$PAGE" >"$WORK/page.txt" 2>/dev/null; then
  echo "rendered with mandoc"
elif command -v groff >/dev/null && groff -man -T ascii -rLL=1000n -rHY=0 "$PAGE" >"$WORK/page.txt" 2>/dev/null; then
  echo "rendered with groff"
else
  skip "nothing renders man pages here (man, mandoc, groff)"
fi
# Undo bold/underline overstrikes (col -b, in case the renderer kept them).
sed -e 's/.\x08//g' -e 's/\xe2\x80\x90/-/g' "$WORK/page.txt" > "$WORK/text.txt"
T=$WORK/text.txt
for s in NAME SYNOPSIS DESCRIPTION COMMANDS OPTIONS "EXIT STATUS" EXAMPLES FILES; do
  grep -q "^$s" "$T" || fail "no $s section"
done
subcommands() { "$M" $1 --help | awk '/^Subcommands:/ {s=1; next} s && NF {print $1}'; }
options() { "$M" $1 --help | grep -o -- '--[a-z][a-z-]*' | sort -u; }
checked=0
for c in $(subcommands ""); do
  case $c in
    snapshot|policy) cmds=$(for s in $(subcommands $c); do echo "$c:$s"; done) ;;
    *) cmds=$c ;;
  esac
  for cmd in $cmds; do
    words=${cmd/:/ }
    grep -q "^ *$words\( \|$\)" "$T" || fail "the man page has no entry for '$words'"
    for o in $(options "$words"); do
      [ "$o" = --help ] && continue
      grep -q -- "$o\b" "$T" || fail "the man page does not mention $o (of $words)"
      checked=$((checked + 1))
    done
  done
done
[ $checked -gt 40 ] || fail "only $checked options checked: the --help parsing broke"
echo "man: ok ($checked options of every subcommand found)"
