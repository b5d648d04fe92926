#!/usr/bin/env bash
# make demo: the whole pipeline on this machine.
#   scripts/demo.sh start   (KAFKA=1: through a local Kafka broker)
#   scripts/demo.sh stop
# A private PostgreSQL 15 (its own directory and port) with iotpipe preloaded,
# the simulator (1,000 readings/s from 100 sensors), alert rules, the ETL every
# minute, the dashboard, and a local webhook sink (scripts/webhook_sink.py) that
# receives the alerts through a receiver and a route (issue 12).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${IOTPIPE_DEMO_DIR:-/tmp/iotpipe-demo}
PORT=${IOTPIPE_DEMO_PORT:-5499}
DASH_PORT=${IOTPIPE_DEMO_DASHBOARD_PORT:-8501}
KAFKA_PORT=${IOTPIPE_DEMO_KAFKA_PORT:-19099}
SINK_PORT=${IOTPIPE_DEMO_SINK_PORT:-8599}
RATE=${RATE:-1000}
SENSORS=${SENSORS:-100}
export PGINSTALL=${PGINSTALL:-$ROOT/build/pg}
PSQL=(psql -X -q -h "$DIR" -p "$PORT" -U postgres -d iotpipe)

stop() {
  if [ -f "$DIR/webhook.pid" ]; then
    kill "$(cat "$DIR/webhook.pid")" 2>/dev/null || true
    rm -f "$DIR/webhook.pid"
  fi
  if [ -f "$DIR/dashboard.pid" ]; then
    kill "$(cat "$DIR/dashboard.pid")" 2>/dev/null || true
    rm -f "$DIR/dashboard.pid"
  fi
  if [ -d "$DIR/kafka" ]; then
    test/kafka/kafka.sh stop --dir "$DIR/kafka" >/dev/null 2>&1 || true
  fi
  scripts/pgcluster.sh stop "$DIR" 2>/dev/null || true
}

case "${1:-start}" in
  stop)
    stop
    echo "iotpipe demo stopped."
    exit 0
    ;;
  start) ;;
  *) echo "usage: demo.sh start|stop" >&2; exit 2 ;;
esac

stop
scripts/pginstall.sh "$PGINSTALL" >/dev/null
scripts/pgcluster.sh start "$DIR" "$PORT" iotpipe \
  --conf "iotpipe.etl_interval = '60s'" \
  --conf "log_min_messages = warning"

"${PSQL[@]}" <<'SQL'
CREATE EXTENSION iotpipe;
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotpipe_dashboard') THEN
    CREATE ROLE iotpipe_dashboard LOGIN PASSWORD 'dashboard' IN ROLE iotpipe_operator;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
    CREATE ROLE analyst LOGIN IN ROLE iotpipe_analyst;
  END IF;
END $$;
INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold, for_duration, severity)
VALUES ('overheating', 'threshold', 'temperature', NULL, '>', 45, 42, '2 s', 'critical'),
       ('cold room too warm', 'threshold', 'temperature', 'warehouse/cold-room', '>', 8, 6, '5 s', 'warning'),
       ('humid', 'threshold', 'humidity', NULL, '>', 95, 90, '10 s', 'info');
INSERT INTO iotpipe.alert_rules (name, kind, for_duration, severity)
VALUES ('sensor offline', 'offline', '30 s', 'warning');
-- the robust anomaly statistic and drift with their default thresholds
-- (docs/alerts.md); the warm-up is cut from 2 days to 2 minutes (1,200
-- readings a sensor at the demo's rate) so that the demo judges its sensors
-- while you watch
INSERT INTO iotpipe.alert_rules (name, kind, metric, warmup, severity)
VALUES ('temperature anomaly', 'anomaly', 'temperature', '2 minutes', 'info'),
       ('temperature drift', 'drift', 'temperature', '2 minutes', 'info');
SQL

# alert delivery: a local webhook sink, a receiver pointing at it, a route for
# warnings and worse; what it received is appended to $DIR/webhook.jsonl
nohup python3 scripts/webhook_sink.py --port "$SINK_PORT" --out "$DIR/webhook.jsonl" \
  >"$DIR/webhook.log" 2>&1 &
echo $! >"$DIR/webhook.pid"
"${PSQL[@]}" -v url="http://127.0.0.1:$SINK_PORT/iotpipe" <<'SQL'
INSERT INTO iotpipe.receivers (name, kind, url) VALUES ('demo-webhook', 'webhook', :'url');
INSERT INTO iotpipe.routes (receiver, min_severity) VALUES ('demo-webhook', 'warning');
SQL

if [ "${KAFKA:-0}" = 1 ]; then
  test/kafka/kafka.sh fetch
  test/kafka/kafka.sh start --dir "$DIR/kafka" --port "$KAFKA_PORT" >/dev/null
  test/kafka/kafka.sh topic-create iot.readings 4 --dir "$DIR/kafka" >/dev/null
  "${PSQL[@]}" -c "SELECT iotpipe.kafka_start(brokers => '127.0.0.1:$KAFKA_PORT', topic => 'iot.readings', workers => 2)" >/dev/null
  "${PSQL[@]}" -c "SELECT iotpipe.simulator_start(sensors => $SENSORS, rate => $RATE, sink => 'kafka', topic => 'iot.readings', brokers => '127.0.0.1:$KAFKA_PORT')" >/dev/null
  path="simulator -> Kafka topic iot.readings (127.0.0.1:$KAFKA_PORT) -> 2 consumer workers -> iotpipe.readings"
else
  "${PSQL[@]}" -c "SELECT iotpipe.simulator_start(sensors => $SENSORS, rate => $RATE)" >/dev/null
  path="simulator -> ingest core -> iotpipe.readings"
fi

if [ -x dashboard/run.sh ]; then
  nohup dashboard/run.sh --url "postgresql://iotpipe_dashboard:dashboard@127.0.0.1:$PORT/iotpipe" \
    --port "$DASH_PORT" >"$DIR/dashboard.log" 2>&1 &
  echo $! >"$DIR/dashboard.pid"
fi

echo "waiting 10 s for the pipeline to fill ..."
sleep 10
"${PSQL[@]}" -P pager=off <<'SQL'
\echo
\echo iotpipe.status:
SELECT worker, state, messages, rows, rejected, round(rate) AS "rate/s", last_error FROM iotpipe.status;
SELECT name, kind, enabled, pending, sent, failed FROM iotpipe.receiver_overview;
SELECT count(*) AS readings, count(DISTINCT sensor_id) AS sensors,
       round(count(*) / greatest(extract(epoch FROM max(ingested_at) - min(ingested_at)), 1)) AS "ingested/s"
  FROM iotpipe.readings;
SQL

cat <<MSG

iotpipe demo is running: $path
  PostgreSQL : psql -h 127.0.0.1 -p $PORT -U postgres iotpipe      (data in $DIR)
               as an analyst: psql -h 127.0.0.1 -p $PORT -U analyst iotpipe
  dashboard  : http://127.0.0.1:$DASH_PORT/   (log: $DIR/dashboard.log)
  try        : SELECT * FROM iotpipe.status;
               SELECT * FROM iotpipe.readings ORDER BY ts DESC LIMIT 5;
               SELECT * FROM iotpipe.alerts ORDER BY alert_id DESC LIMIT 5;
               LISTEN iotpipe_alerts;
               SELECT * FROM iotpipe.run_etl();
  delivery   : alerts (warning and critical) go to the webhook sink on 127.0.0.1:$SINK_PORT;
               what it received: tail -f $DIR/webhook.jsonl
               SELECT receiver, event, state, attempts, last_error FROM iotpipe.notifications
                ORDER BY notification_id DESC LIMIT 5;
               SELECT iotpipe.test_receiver('demo-webhook');
  stop       : make demo-stop
MSG
