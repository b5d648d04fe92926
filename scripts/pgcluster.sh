#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for tests, benchmarks and the demo.
#   pgcluster.sh start DIR PORT [DBNAME] [--no-preload] [--conf 'key = value']...
#   pgcluster.sh stop DIR [immediate]
#   pgcluster.sh restart DIR [immediate]
# Binaries: $PGBIN, else $PGINSTALL's (scripts/pginstall.sh), else the system's.
# The cluster runs as the postgres user when invoked as root (initdb refuses
# root), listens on 127.0.0.1:PORT and on a Unix socket in DIR, trusts local
# connections, preloads iotpipe and points iotpipe.database at DBNAME.
set -euo pipefail

# PGINSTALL: a private installation made by scripts/pginstall.sh (tests, benchmarks)
if [ -n "${PGINSTALL:-}" ]; then
  PGBIN=${PGBIN:-$PGINSTALL$(pg_config --bindir)}
else
  PGBIN=${PGBIN:-$(pg_config --bindir)}
fi
cmd=${1:?usage: pgcluster.sh start|stop|restart DIR ...}
DIR=${2:?DIR required}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
  start)
    PORT=${3:?PORT required}
    DB=${4:-iotpipe}
    shift 4 || shift $#
    preload=1
    extra=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --no-preload) preload=0 ;;
        --conf) extra+=("$2"); shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
      esac
      shift
    done
    if [ -f "$DIR/data/postmaster.pid" ]; then
      "$0" stop "$DIR" || true
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR"; fi
    as_owner "$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 1; }
    {
      echo "port = $PORT"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$DIR'"
      echo "max_connections = 100"
      echo "max_worker_processes = 32"
      echo "shared_buffers = 512MB"
      echo "max_wal_size = 4GB"
      echo "wal_level = minimal"
      echo "max_wal_senders = 0"
      echo "synchronous_commit = on"
      echo "logging_collector = off"
      echo "log_line_prefix = '%m [%p] %b '"
      echo "restart_after_crash = on"
      echo "timezone = 'UTC'"
      if [ "$preload" = 1 ]; then
        echo "shared_preload_libraries = 'iotpipe'"
        echo "iotpipe.database = '$DB'"
      fi
      for line in "${extra[@]}"; do echo "$line"; done
    } >>"$DIR/data/postgresql.conf"
    as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null
    as_owner "$PGBIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -qAtc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
      || as_owner "$PGBIN/createdb" -h "$DIR" -p "$PORT" -U postgres "$DB"
    ;;
  stop)
    mode=${3:-fast}
    if [ -f "$DIR/data/postmaster.pid" ]; then
      as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -m "$mode" -w -t 60 stop >/dev/null || true
    fi
    ;;
  restart)
    mode=${3:-fast}
    as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -m "$mode" -w -t 60 restart >/dev/null
    ;;
  *)
    echo "usage: pgcluster.sh start|stop|restart DIR ..." >&2
    exit 2
    ;;
esac
