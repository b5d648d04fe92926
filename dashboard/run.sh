#!/usr/bin/env bash
# Start the iotpipe dashboard.
#   dashboard/run.sh --url postgresql://user@host:port/db [--port 8501] [--address 127.0.0.1]
# The URL may also come from $IOTPIPE_DASHBOARD_URL or dashboard/.streamlit/secrets.toml
# ([connections.iotpipe] url = "..."). The dashboard switches to the iotpipe_operator role
# when the login role is a member of it (IOTPIPE_DASHBOARD_ROLE overrides, '' disables).
# Runs in the foreground (make demo puts it in the background) and prints the URL.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PORT=8501
ADDRESS=${IOTPIPE_DASHBOARD_ADDRESS:-127.0.0.1}
while [ $# -gt 0 ]; do
  case "$1" in
    --url) export IOTPIPE_DASHBOARD_URL="$2"; shift ;;
    --url=*) export IOTPIPE_DASHBOARD_URL="${1#--url=}" ;;
    --port) PORT="$2"; shift ;;
    --port=*) PORT="${1#--port=}" ;;
    --address) ADDRESS="$2"; shift ;;
    --address=*) ADDRESS="${1#--address=}" ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Streamlit reads .streamlit/config.toml and secrets.toml from the working directory.
cd "$HERE"
echo "iotpipe dashboard: http://$ADDRESS:$PORT/"
exec "$PY" -m streamlit run app.py --server.port "$PORT" --server.address "$ADDRESS" \
  --server.headless true --browser.gatherUsageStats false
