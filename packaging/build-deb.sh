#!/bin/sh
# Build macula-agent_<version>_<arch>.deb for Debian 12 (bookworm) with dpkg-deb.
#
#   packaging/build-deb.sh amd64|arm64|armhf [OUTDIR]     (default OUTDIR: packaging/out)
#
# The agent's modules and qh3 (not in Debian) go to /usr/lib/macula-agent; msgpack,
# cryptography and systemd-python come from Debian. The qh3 abi3 wheel for the target is
# downloaded once into packaging/cache/wheels and checked against packaging/qh3.sha256.
set -eu

ARCH=${1:?usage: build-deb.sh amd64|arm64|armhf [OUTDIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
OUT=${2:-$HERE/out}
PYTHON=${PYTHON:-python3}
QH3_VERSION=2.1.0

case "$ARCH" in
    amd64) MACHINE=x86_64 ;;
    arm64) MACHINE=aarch64 ;;
    armhf) MACHINE=armv7l ;;
    *) echo "unknown architecture $ARCH (amd64, arm64, armhf)" >&2; exit 2 ;;
esac

UPSTREAM=$(PYTHONPATH="$REPO/agent" "$PYTHON" -c 'import macula; print(macula.__version__)')
VERSION=$(sed -n '1s/^macula-agent (\([^)]*\)).*/\1/p' "$HERE/debian/changelog")
case "$VERSION" in
    "$UPSTREAM"-*) ;;
    *) echo "debian/changelog has $VERSION but macula.__version__ is $UPSTREAM" >&2; exit 1 ;;
esac
# Reproducible: every timestamp is the last commit's.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH

WHEEL=qh3-$QH3_VERSION-cp37-abi3-manylinux_2_17_$MACHINE.manylinux2014_$MACHINE.whl
CACHE=$HERE/cache/wheels
if [ ! -f "$CACHE/$WHEEL" ]; then
    mkdir -p "$CACHE"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform "manylinux_2_17_$MACHINE" --python-version 3.11 --implementation cp \
        --dest "$CACHE" "qh3==$QH3_VERSION"
fi
(cd "$CACHE" && grep " $WHEEL\$" "$HERE/qh3.sha256" | sha256sum --check --quiet)

BUILD=$OUT/build-$ARCH
ROOT=$BUILD/root
rm -rf "$BUILD"
mkdir -p "$ROOT/DEBIAN" "$OUT"
LIB=$ROOT/usr/lib/macula-agent
DOC=$ROOT/usr/share/doc/macula-agent

install -d "$LIB"
(cd "$REPO/agent" && find macula -name __pycache__ -prune -o -type f ! -name '*.pyc' -print) |
    while read -r f; do install -D -m 0644 "$REPO/agent/$f" "$LIB/$f"; done
"$PYTHON" -m zipfile -e "$CACHE/$WHEEL" "$LIB"
rm -f "$LIB/qh3-$QH3_VERSION.dist-info/RECORD"   # lists files as pip installed them; dpkg owns them
find "$LIB" -type d -exec chmod 0755 {} + && find "$LIB" -type f -exec chmod 0644 {} +
chmod 0644 "$LIB/qh3/"*.so

launcher() {  # launcher PATH MODULE: a script running MODULE's main() from the private dir
    install -d "$(dirname "$1")"
    cat > "$1" <<LAUNCHER
#!/usr/bin/python3 -I
# The agent's modules and the bundled qh3 live in /usr/lib/macula-agent.
import sys
sys.path.insert(0, "/usr/lib/macula-agent")
from $2 import main
sys.exit(main())
LAUNCHER
    chmod 0755 "$1"
}
launcher "$ROOT/usr/bin/macula" macula.cli.main
launcher "$ROOT/usr/libexec/macula-agent/firstboot" macula.service.firstboot
launcher "$ROOT/lib/systemd/system-generators/macula-agent-generator" macula.service.generator

install -D -m 0644 "$REPO/systemd/macula-agent.service" "$ROOT/lib/systemd/system/macula-agent.service"
install -D -m 0644 "$REPO/systemd/macula-agent-firstboot.service" \
    "$ROOT/lib/systemd/system/macula-agent-firstboot.service"
install -D -m 0644 "$REPO/systemd/macula.sysusers" "$ROOT/usr/lib/sysusers.d/macula.conf"
install -D -m 0644 "$REPO/systemd/macula-agent.sysctl" "$ROOT/usr/lib/sysctl.d/30-macula-agent.conf"

# The conffile: every key with its default, from the schema itself; [limits] defaults are
# per board, so they are shown as such rather than as one machine's numbers.
install -d "$ROOT/etc/macula"
PYTHONPATH="$REPO/agent" "$PYTHON" - "$ROOT/etc/macula/agent.toml" <<'CONF'
import dataclasses, sys
from macula.config import render_defaults
from macula.config.schema import LimitsConfig
per_board = {f.name: "per hardware profile, see `macula hw`" for f in dataclasses.fields(LimitsConfig)}
with open(sys.argv[1], "w") as fh:
    fh.write(render_defaults(per_board) + "\n")
CONF
chmod 0644 "$ROOT/etc/macula/agent.toml"

install -d "$DOC" "$ROOT/usr/share/man/man1"
install -D -m 0644 "$HERE/debian/lintian-overrides" "$ROOT/usr/share/lintian/overrides/macula-agent"
install -m 0644 "$HERE/debian/copyright" "$DOC/copyright"
gzip -9n < "$HERE/debian/changelog" > "$DOC/changelog.Debian.gz"
gzip -9n < "$REPO/docs/DEPLOYMENT.md" > "$DOC/DEPLOYMENT.md.gz"
sed "s/@VERSION@/$UPSTREAM/" "$HERE/macula.1" | gzip -9n > "$ROOT/usr/share/man/man1/macula.1.gz"
chmod 0644 "$DOC"/*.gz "$ROOT/usr/share/man/man1/macula.1.gz"

for script in postinst prerm postrm; do
    install -m 0755 "$HERE/debian/$script" "$ROOT/DEBIAN/$script"
done
echo /etc/macula/agent.toml > "$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$SIZE/" \
    "$HERE/debian/control.in" > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
    xargs md5sum > DEBIAN/md5sums)
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles" "$ROOT/DEBIAN/md5sums"
find "$ROOT" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

DEB=$OUT/macula-agent_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
