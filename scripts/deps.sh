#!/usr/bin/env bash
# Install what iotpipe needs on Debian 12, only what is missing (fast when all is there):
# Debian packages, the Python venv from pinned requirements, the Kafka jars.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(
  postgresql-15 postgresql-server-dev-15 postgresql-contrib
  librdkafka-dev kcat libcurl4-openssl-dev openssl
  postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl
  python3-venv python3-dev
  chromium chromium-driver poppler-utils
  build-essential default-jre-headless maven curl ca-certificates
  clang-14 libclang-rt-14-dev
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Debian postgresql package starts a cluster on 5432; iotpipe never uses it.

# Python venv for tests, benchmarks and the dashboard.
VENV=.venv
REQ=requirements.txt
stamp="$VENV/.requirements.sha"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "deps: creating the Python venv from $REQ"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$REQ"
  echo "$want" > "$stamp"
fi

# Kafka jars (cached under .cache/kafka), when the harness exists.
if [ -x test/kafka/kafka.sh ]; then
  test/kafka/kafka.sh fetch
fi
