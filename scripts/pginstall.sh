#!/usr/bin/env bash
# A private PostgreSQL 15 installation tree for tests and benchmarks, with this
# tree's iotpipe installed into it:  scripts/pginstall.sh DEST
#
# PostgreSQL finds its lib and share directories relative to its binaries, so
# a copy of the Debian server tree under DEST/usr/... runs like the system one
# but loads DEST's iotpipe.so and install script.  Tests then never depend on
# (or disturb) the system-wide installation, and need no root to install.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=$(realpath -m "${1:?usage: pginstall.sh DEST}")
PGBINDIR=$(pg_config --bindir)          # /usr/lib/postgresql/15/bin
PGLIB=$(dirname "$PGBINDIR")            # /usr/lib/postgresql/15
PGSHARE=$(pg_config --sharedir)         # /usr/share/postgresql/15

stamp="$DEST/.pg-copied"
if [ ! -f "$stamp" ] || [ "$PGBINDIR/postgres" -nt "$stamp" ] || [ "$PGSHARE/extension" -nt "$stamp" ]; then
  rm -rf "$DEST"
  mkdir -p "$DEST$(dirname "$PGLIB")" "$DEST$(dirname "$PGSHARE")"
  cp -a "$PGLIB" "$DEST$(dirname "$PGLIB")/"
  cp -a "$PGSHARE" "$DEST$(dirname "$PGSHARE")/"
  touch "$stamp"
fi
make -s with_llvm=no
make -s with_llvm=no install DESTDIR="$DEST" >/dev/null
chmod -R a+rX "$DEST"
echo "$DEST$PGBINDIR"
