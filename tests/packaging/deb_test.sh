#!/usr/bin/env bash
# `cmake --install` and the Debian package: the install tree has the binary,
# the man page, the bash completion (and any systemd units in
# packaging/systemd); `cpack -G DEB` builds a package whose control fields
# are right, which unpacks (dpkg -x) into a root where
# <root>/usr/bin/multisnap --version prints the project version, with the
# man page and completion in it; lintian finds no error (skipped with a
# reason when lintian is absent).
# Usage: deb_test.sh BUILD_DIR SOURCE_DIR VERSION
set -euo pipefail
BUILD=$(readlink -f "$1") SRC=$(readlink -f "$2") VERSION=$3
WORK=$(mktemp -d /tmp/multisnap-deb-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }
for t in cpack dpkg-deb dpkg-shlibdeps; do command -v $t >/dev/null || skip "$t is not installed (dpkg-dev, cmake)"; done
[ -f "$BUILD/packaging/multisnap.8.gz" ] || skip "no man page was built (scdoc is not installed; scripts/deps.sh installs it)"

# cmake --install into a prefix.
cmake --install "$BUILD" --prefix "$WORK/inst" >/dev/null
for f in bin/multisnap share/man/man8/multisnap.8.gz share/bash-completion/completions/multisnap \
         share/doc/multisnap/copyright share/doc/multisnap/changelog.Debian.gz; do
  [ -e "$WORK/inst/$f" ] || fail "cmake --install did not install $f"
done
for unit in "$SRC"/packaging/systemd/*.service "$SRC"/packaging/systemd/*.socket; do
  [ -e "$unit" ] || continue
  [ -e "$WORK/inst/lib/systemd/system/$(basename "$unit")" ] || fail "$(basename "$unit") is not installed"
done

# The package.
(cd "$BUILD" && cpack --config "$BUILD/CPackConfig.cmake" -G DEB -B "$WORK/pkg" >"$WORK/cpack.log" 2>&1) \
  || { cat "$WORK/cpack.log"; fail "cpack failed"; }
DEB=$(ls "$WORK"/pkg/*.deb)
[ "$(basename "$DEB")" = "multisnap_${VERSION}-1_amd64.deb" ] || [ "$(basename "$DEB")" = "multisnap_${VERSION}-1_$(dpkg --print-architecture).deb" ] \
  || fail "unexpected package name $(basename "$DEB")"
dpkg -I "$DEB" > "$WORK/info.txt"
# A field's value, read whole before it is matched: `dpkg-deb -f ... | grep -q`
# fails under pipefail whenever grep exits at its match before dpkg-deb has
# written the rest (SIGPIPE), which a loaded machine made happen.
field() { dpkg-deb -f "$DEB" "$1"; }
has() { local v; v=$(field "$1"); grep -q -- "$2" <<<"$v"; }
[ "$(field Package)" = multisnap ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$VERSION-1" ] || fail "Version: $(field Version)"
[ "$(field Section)" = admin ] || fail "Section: $(field Section)"
has Maintainer '<.*@.*>' || fail "Maintainer: $(field Maintainer)"
has Description "multi-snapshot block volume" || fail "Description: $(field Description)"
[ "$(field Description | wc -l)" -gt 2 ] || fail "no extended description"
for lib in libc6 liburing2 libxxhash0 libstdc++6; do  # shlibdeps found what the binary links
  has Depends "$lib" || fail "Depends lacks $lib: $(field Depends)"
done

mkdir "$WORK/root"
dpkg -x "$DEB" "$WORK/root"
out=$("$WORK/root/usr/bin/multisnap" --version)
[ "$out" = "multisnap $VERSION" ] || fail "--version printed '$out', not 'multisnap $VERSION'"
[ -s "$WORK/root/usr/share/man/man8/multisnap.8.gz" ] || fail "no man page in the package"
zcat "$WORK/root/usr/share/man/man8/multisnap.8.gz" >"$WORK/page.8"  # whole, as above
grep -q '^\.SH "\?NAME' "$WORK/page.8" || fail "the packaged man page is not a man page"
C=$WORK/root/usr/share/bash-completion/completions/multisnap
[ -s "$C" ] || fail "no bash completion in the package"
bash -n "$C" || fail "the completion is not valid bash"
# Every subcommand of --help is offered by the completion.
for c in $("$WORK/root/usr/bin/multisnap" --help | awk '/^Subcommands:/ {s=1; next} s && NF {print $1}'); do
  grep -q -- "$c" "$C" || fail "the completion does not know '$c'"
done
if [ -f /usr/share/bash-completion/bash_completion ]; then
  words=$(bash -c "source /usr/share/bash-completion/bash_completion; source '$C'
    COMP_WORDS=(multisnap snapshot cr); COMP_CWORD=2; COMP_LINE='multisnap snapshot cr'; COMP_POINT=\${#COMP_LINE}
    _multisnap; echo \"\${COMPREPLY[*]}\"")
  [ "$words" = create ] || fail "completing 'multisnap snapshot cr' gave '$words'"
fi

if command -v lintian >/dev/null; then
  lintian --fail-on error "$DEB" 2>&1 | grep -v "running with root privileges" | tee "$WORK/lintian.txt" || true
  ! grep -q '^E:' "$WORK/lintian.txt" || fail "lintian found errors"
  echo "lintian: no errors"
else
  echo "SKIPPED part: lintian is not installed; the package was not checked by lintian"
fi
echo "deb: ok ($(basename "$DEB"), $(stat -c %s "$DEB") bytes)"
