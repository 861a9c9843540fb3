#!/bin/sh
# Install wahookd from this checkout onto a Debian/Ubuntu server (docs/install.md):
#   /opt/wahookd                  a venv holding wahookd (+ plugin distributions given)
#   /etc/systemd/system/wahookd.service (+ wahookd.service.d/credentials.conf, kept if present)
#   /etc/sysusers.d/wahookd.conf  the wahookd system user, created with systemd-sysusers
#   /etc/wahookd/wahookd.toml     the commented reference config, only if absent (0640 root:wahookd)
#   /etc/wahookd/credentials/     secrets for LoadCredential= (0700 root)
# Re-running it upgrades: the venv and the unit are replaced, the config and credentials kept.
#
# --root DIR installs under DIR instead of / (CI, image builds) and never calls systemctl.
# The venv is made where it will run ($DIR/opt/wahookd): its scripts name that path.
set -eu

usage() {
    cat <<EOF
usage: $0 [--root DIR] [--prefix DIR] [--python PYTHON] [PLUGIN_PATH...]

  --root DIR       install under DIR instead of / (no systemctl is called)
  --prefix DIR     where the venv goes (default /opt/wahookd)
  --python PYTHON  the interpreter the venv is made from (default python3; 3.11 or newer)
  PLUGIN_PATH      plugin distributions to install into the venv too (e.g. plugins/wahookd-redis)
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
PREFIX=/opt/wahookd
PYTHON=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) break ;;
    esac
done
case $PREFIX in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
# Plugin paths are taken relative to where the script was called from (no spaces in them).
PLUGINS=""
for plugin in "$@"; do
    [ -e "$plugin/pyproject.toml" ] || [ -e "$plugin/setup.py" ] || die "$plugin is not a Python distribution"
    case $plugin in *[[:space:]]*) die "plugin paths cannot hold spaces: $plugin" ;; esac
    PLUGINS="$PLUGINS $(cd "$plugin" && pwd)"
done
PLUGINS=${PLUGINS# }

if [ "$(id -u)" -ne 0 ] && [ -z "$ROOT" ]; then
    die "run as root (or give --root DIR)"
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "wahookd needs Python 3.11 or newer, $PYTHON is $("$PYTHON" -V 2>&1);" \
        "give a newer one with --python (e.g. python3.12)"
# Debian and Ubuntu ship venv's pip bootstrap as its own package.
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "$PYTHON has no venv module: apt-get install python3-venv"

VENV=$ROOT$PREFIX
ETC=$ROOT/etc/wahookd
UNIT_DIR=$ROOT/etc/systemd/system

echo "==> venv $VENV"
# A venv whose interpreter is gone (a distribution upgrade replaced python3.11) is remade.
if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    "$PYTHON" -m venv --clear "$VENV"
fi
# pip builds in the source tree, and setuptools reuses its build/lib: a module deleted since
# an earlier build would be installed again. Build from clean copies instead, which also
# leaves the checkout untouched (it may be read-only, or shared with a running build).
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
copy_source() {
    mkdir -p "$2"
    tar -C "$1" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=.ruff_cache \
        -cf - . | tar -C "$2" -xf -
}
copy_source "$SRC" "$BUILD/wahookd"
set --
n=0
for plugin in $PLUGINS; do
    n=$((n + 1))
    copy_source "$plugin" "$BUILD/plugin$n"
    set -- "$@" "$BUILD/plugin$n"
done
echo "==> pip install wahookd $PLUGINS"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$BUILD/wahookd" "$@"
"$VENV/bin/wahookd" --help >/dev/null || die "the installed wahookd does not run"
install -d -m 0755 "$VENV/share/doc/wahookd"
install -m 0644 "$SRC/README.md" "$SRC"/docs/*.md "$VENV/share/doc/wahookd/"

echo "==> user wahookd"
install -D -m 0644 "$SRC/systemd/wahookd.sysusers" "$ROOT/etc/sysusers.d/wahookd.conf"
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers ${ROOT:+"--root=$ROOT"} wahookd.conf
elif [ -z "$ROOT" ]; then
    getent passwd wahookd >/dev/null ||
        useradd --system --user-group --home-dir /var/lib/wahookd --no-create-home \
            --shell /usr/sbin/nologin --comment "wahookd webhook receiver" wahookd
else
    die "systemd-sysusers is needed to create the user under --root: apt-get install systemd"
fi
# The group as the target system knows it (under --root, its own /etc/group).
GID=$(awk -F: '$1 == "wahookd" { print $3 }' "$ROOT/etc/group")
[ -n "$GID" ] || die "no group wahookd in $ROOT/etc/group"

echo "==> unit $UNIT_DIR/wahookd.service"
install -d -m 0755 "$UNIT_DIR/wahookd.service.d"
sed "s|/opt/wahookd|$PREFIX|g" "$SRC/systemd/wahookd.service" >"$UNIT_DIR/wahookd.service.tmp"
chmod 0644 "$UNIT_DIR/wahookd.service.tmp"
mv "$UNIT_DIR/wahookd.service.tmp" "$UNIT_DIR/wahookd.service"
if [ ! -e "$UNIT_DIR/wahookd.service.d/credentials.conf" ]; then
    install -m 0644 "$SRC/systemd/credentials.conf" "$UNIT_DIR/wahookd.service.d/credentials.conf"
fi

echo "==> config $ETC"
install -d -m 0755 "$ETC"
# Only root reads the secrets; systemd hands them to the service (LoadCredential=).
install -d -m 0700 "$ETC/credentials"
if [ -e "$ETC/wahookd.toml" ]; then
    echo "    kept $ETC/wahookd.toml; the current reference is $VENV/share/doc/wahookd/wahookd.toml"
else
    install -m 0640 "$SRC/etc/wahookd.toml" "$ETC/wahookd.toml"
fi
install -m 0644 "$SRC/etc/wahookd.toml" "$VENV/share/doc/wahookd/wahookd.toml"
if [ "$(id -u)" -eq 0 ]; then
    chown "0:$GID" "$ETC/wahookd.toml"
    chown 0:0 "$ETC/credentials"
else
    echo "    not root: $ETC/wahookd.toml is not group wahookd; the service could not read it"
fi

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<EOF

wahookd is installed in $VENV. Next (docs/install.md says more):
  1. Edit /etc/wahookd/wahookd.toml: your [sources.*] and [sinks.*]. No secrets in it:
     each secret_file = "NAME" is a file /etc/wahookd/credentials/NAME, e.g.
       (umask 077; printf '%s' 'the-secret' > /etc/wahookd/credentials/wasender-secret)
  2. Hand each one to the service: a line in
     /etc/systemd/system/wahookd.service.d/credentials.conf
       LoadCredential=wasender-secret:/etc/wahookd/credentials/wasender-secret
  3. Check it: CREDENTIALS_DIRECTORY=/etc/wahookd/credentials \\
       $PREFIX/bin/wahookd check-config --config /etc/wahookd/wahookd.toml
  4. Start it: systemctl daemon-reload && systemctl enable --now wahookd
     (upgrading: systemctl restart wahookd)
  5. Watch it: systemctl status wahookd; journalctl -u wahookd -f;
     curl http://127.0.0.1:8080/healthz
EOF
