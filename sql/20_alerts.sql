-- The alert engine through iotpipe.ingest_json(), with fixed event times:
-- hysteresis, for_duration, rate, anomaly, scope, disabled rules, severity,
-- ack, silence, out-of-order readings, offline (timer driven with a given
-- "now"), rule changes.  Sensors here are al-*; NOTIFY payloads are checked
-- by test/integration/test_alerts.py (psql would print backend PIDs).
SET timezone = 'UTC';
\set VERBOSITY terse
TRUNCATE iotpipe.alerts, iotpipe.silences, iotpipe.alert_rules RESTART IDENTITY CASCADE;
DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'al-%';
DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'al-%';

-- feed(sensor, location, first ts, step, values): one temperature reading per value
CREATE FUNCTION pg_temp.feed(sensor text, loc text, t0 timestamptz, step interval, vals float8[],
                             metric text DEFAULT 'temperature')
RETURNS bigint LANGUAGE sql AS $$
  SELECT accepted FROM iotpipe.ingest_json(ARRAY(
    SELECT json_build_object('sensor_id', sensor,
                             'ts', to_char(t0 + step * (i - 1), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                             metric, vals[i], 'location', loc)::text
      FROM generate_subscripts(vals, 1) AS i ORDER BY i))
$$;
CREATE VIEW pg_temp.shown AS
  SELECT a.alert_id, r.name AS rule, a.sensor_id, a.state, a.severity,
         round(a.value::numeric, 2) AS value, a.reading, a.started_at, a.resolved_at,
         round(a.resolved_value::numeric, 2) AS resolved_value, a.silenced
    FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id);

-- 1. hysteresis: trip above 40, clear below 35; 41/38/42/37/41 fires once
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, clear_threshold, severity)
VALUES ('al-hot', 'threshold', 'temperature', 'al-h1', '>', 40, 35, 'critical');
SELECT pg_temp.feed('al-h1', 'al-plant-a', '2026-03-01 10:00+00', '1 minute',
                    '{30, 41, 38, 42, 37, 41, 36}');
SELECT * FROM pg_temp.shown ORDER BY alert_id;
-- 34 is below the clear threshold: resolved; a new breach is a new alert
SELECT pg_temp.feed('al-h1', 'al-plant-a', '2026-03-01 10:07+00', '1 minute', '{34, 41, 30}');
SELECT * FROM pg_temp.shown WHERE rule = 'al-hot' ORDER BY alert_id;

-- 2. for_duration (event time): short breaches do not fire, a long one
-- fires at the first reading 5 minutes into the breach
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, for_duration, severity)
VALUES ('al-humid', 'threshold', 'humidity', 'al-d1', '>', 80, '5 minutes', 'warning');
SELECT pg_temp.feed('al-d1', NULL, '2026-03-01 10:00+00', '1 minute',
                    '{85, 86, 87, 88, 70, 85, 86, 87, 88, 89, 90, 91}', 'humidity');
SELECT rule, sensor_id, state, value, started_at FROM pg_temp.shown WHERE rule = 'al-humid';

-- 3. rate: more than 2 °C per minute, raw between consecutive readings
-- (rate_window 0) and smoothed with a time constant of 1 minute
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, severity, rate_window)
VALUES ('al-rise', 'rate', 'temperature', 'al-r1', '>', 2, 'warning', '0'),
       ('al-rise-smooth', 'rate', 'temperature', 'al-r1', '>', 2, 'warning', '1 minute');
SELECT pg_temp.feed('al-r1', NULL, '2026-03-01 10:00+00', '1 minute', '{20, 21, 22, 26, 27}');
-- 27 -> 30 in 30 s: 6 °C/min fires, 30 -> 30.5: 1 °C/min resolves
SELECT pg_temp.feed('al-r1', NULL, '2026-03-01 10:04:30+00', '30 seconds', '{30, 30.5}');
SELECT rule, state, value, reading, started_at, resolved_at, resolved_value
  FROM pg_temp.shown WHERE rule LIKE 'al-rise%' ORDER BY alert_id;

-- 4. anomaly, statistic zscore (0.1.0's): |x - EWMA mean| / EWM standard
-- deviation (span 20) above 4, judged after 10 readings; a jump to 35 fires,
-- the return to normal resolves (the robust statistic: sql/22_anomaly.sql)
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, threshold, window_size, min_samples, severity, statistic)
VALUES ('al-anom', 'anomaly', 'temperature', 'al-a1', 4, 20, 10, 'info', 'zscore');
SELECT pg_temp.feed('al-a1', NULL, '2026-03-01 10:00+00', '1 minute',
                    ARRAY(SELECT 20 + round(sin(i)::numeric, 2)::float8 FROM generate_series(1, 30) i));
SELECT count(*) AS alerts_while_normal FROM pg_temp.shown WHERE rule = 'al-anom';
SELECT pg_temp.feed('al-a1', NULL, '2026-03-01 10:30+00', '1 minute', '{35, 20.1}');
SELECT rule, state, severity, value, reading, started_at, resolved_at, resolved_value
  FROM pg_temp.shown WHERE rule = 'al-anom';

-- 5. scope by location: only sensors at al-plant-b; a reading without a
-- location keeps the sensor's known one
INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, severity)
VALUES ('al-plant-b-hot', 'threshold', 'temperature', 'al-plant-b', '>', 50, 'critical');
SELECT pg_temp.feed('al-l1', 'al-plant-b', '2026-03-01 10:00+00', '1 minute', '{20, 55}');
SELECT pg_temp.feed('al-l2', 'al-plant-c', '2026-03-01 10:00+00', '1 minute', '{20, 55}');
SELECT pg_temp.feed('al-l3', 'al-plant-b', '2026-03-01 10:00+00', '1 minute', '{20}');
SELECT pg_temp.feed('al-l3', NULL, '2026-03-01 10:01+00', '1 minute', '{56}');
SELECT rule, sensor_id, state, value FROM pg_temp.shown WHERE rule = 'al-plant-b-hot' ORDER BY sensor_id;

-- 6. disabled rules do not fire; enabling takes effect at once; disabling
-- resolves what the rule had firing
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, enabled)
VALUES ('al-disabled', 'threshold', 'temperature', 'al-x1', '>', 0, false);
SELECT pg_temp.feed('al-x1', NULL, '2026-03-01 10:00+00', '1 minute', '{10, 11}');
SELECT count(*) AS alerts_of_disabled_rule FROM pg_temp.shown WHERE rule = 'al-disabled';
UPDATE iotpipe.alert_rules SET enabled = true WHERE name = 'al-disabled';
SELECT pg_temp.feed('al-x1', NULL, '2026-03-01 10:02+00', '1 minute', '{12}');
SELECT rule, state, value, started_at FROM pg_temp.shown WHERE rule = 'al-disabled';
UPDATE iotpipe.alert_rules SET enabled = false WHERE name = 'al-disabled';
SELECT rule, state FROM pg_temp.shown WHERE rule = 'al-disabled';

-- 7. severity: two rules on one sensor, each alert with its rule's severity
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, severity) VALUES
  ('al-sev-warn', 'threshold', 'temperature', 'al-v1', '>', 30, 'warning'),
  ('al-sev-crit', 'threshold', 'temperature', 'al-v1', '>', 45, 'critical');
SELECT pg_temp.feed('al-v1', NULL, '2026-03-01 10:00+00', '1 minute', '{20, 35, 50}');
SELECT rule, severity, value, started_at FROM pg_temp.shown WHERE sensor_id = 'al-v1' ORDER BY alert_id;
-- a threshold change applies to the next reading (same session, no restart)
UPDATE iotpipe.alert_rules SET threshold = 60, clear_threshold = 55 WHERE name = 'al-sev-crit';
SELECT pg_temp.feed('al-v1', NULL, '2026-03-01 10:03+00', '1 minute', '{54}');
SELECT rule, state, resolved_value FROM pg_temp.shown WHERE sensor_id = 'al-v1' ORDER BY alert_id;

-- 8. ack: operators may ack; the first ack is kept; unknown alerts fail
SET ROLE iotpipe_operator;
SELECT alert_id, acked_by, acked_at IS NOT NULL AS acked FROM iotpipe.ack_alert(1, 'alice');
SELECT acked_by FROM iotpipe.ack_alert(1, 'bob');
SELECT acked_by FROM iotpipe.ack_alert(999999);
-- but not manage rules
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold) VALUES ('al-nope', 'threshold', 'temperature', '>', 1);
RESET ROLE;
SELECT acked_by FROM iotpipe.ack_alert(2);
SELECT alert_id, acked_by FROM iotpipe.alerts WHERE acked_at IS NOT NULL ORDER BY alert_id;

-- 9. silence: the alert is recorded (silenced) but not notified
INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold)
VALUES ('al-sil', 'threshold', 'temperature', 'al-plant-s', '>', 40, 40);
INSERT INTO iotpipe.silences (sensor_id, ends_at, reason)
VALUES ('al-s1', now() + interval '1 day', 'maintenance');
SELECT pg_temp.feed('al-s1', 'al-plant-s', '2026-03-01 10:00+00', '1 minute', '{45}');
SELECT pg_temp.feed('al-s2', 'al-plant-s', '2026-03-01 10:00+00', '1 minute', '{45}');
SELECT rule, sensor_id, state, silenced FROM pg_temp.shown WHERE rule = 'al-sil' ORDER BY sensor_id;
-- a silence needs a scope and an end after its start
INSERT INTO iotpipe.silences (ends_at) VALUES (now() + interval '1 hour');

-- 10. out of order: a late safe reading is stored but does not resolve
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, clear_threshold)
VALUES ('al-late', 'threshold', 'temperature', 'al-o1', '>', 40, 35);
SELECT pg_temp.feed('al-o1', NULL, '2026-03-01 10:00+00', '2 minutes', '{30, 45}');
SELECT pg_temp.feed('al-o1', NULL, '2026-03-01 10:01+00', '1 minute', '{20}');
SELECT rule, state, started_at FROM pg_temp.shown WHERE rule = 'al-late';
SELECT count(*) AS stored_readings FROM iotpipe.readings WHERE sensor_id = 'al-o1';
SELECT pg_temp.feed('al-o1', NULL, '2026-03-01 10:03+00', '1 minute', '{30}');
SELECT rule, state, started_at, resolved_at FROM pg_temp.shown WHERE rule = 'al-late';

-- 11. offline: the timer (run here with a "now" two hours ahead) fires once
-- for the silent sensor; its next reading resolves it
INSERT INTO iotpipe.alert_rules (name, kind, sensor_id, for_duration, severity)
VALUES ('al-offline', 'offline', 'al-f1', '1 hour', 'critical');
SELECT pg_temp.feed('al-f1', NULL, '2026-03-01 10:00+00', '1 minute', '{20}');
SELECT iotpipe._alert_timers(now() + interval '2 hours') AS fired;
SELECT iotpipe._alert_timers(now() + interval '2 hours') AS fired_again;
SELECT rule, sensor_id, state, severity, value > 7000 AS silent_for_2h
  FROM pg_temp.shown WHERE rule = 'al-offline';
SELECT pg_temp.feed('al-f1', NULL, '2026-03-01 12:00+00', '1 minute', '{20}');
SELECT rule, state, resolved_at FROM pg_temp.shown WHERE rule = 'al-offline';

-- 12. at most one firing alert per (rule, sensor)
INSERT INTO iotpipe.alerts (rule_id, sensor_id, severity, state, started_at)
SELECT rule_id, 'al-h1', 'critical', 'firing', now() FROM iotpipe.alert_rules WHERE name = 'al-sil'
UNION ALL
SELECT rule_id, 'al-h1', 'critical', 'firing', now() FROM iotpipe.alert_rules WHERE name = 'al-sil';

-- 13. rules are checked
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, clear_threshold)
VALUES ('al-bad-clear', 'threshold', 'temperature', '>', 40, 45);
INSERT INTO iotpipe.alert_rules (name, kind, sensor_id) VALUES ('al-bad-offline', 'offline', 'x');
INSERT INTO iotpipe.alert_rules (name, kind, metric, threshold) VALUES ('al-bad-anomaly', 'anomaly', 'humidity', 0);

-- 14. the NOTIFY payload
SELECT iotpipe._alert_payload(7, 3, 'hot "one"', 'threshold', 'sensor-1', NULL, 'firing', 'critical',
                              'temperature', '>', 41.5, 41.5, 40, '2026-03-01 10:00:00.123+00',
                              '2026-03-01 10:00:00.123+00');

-- everything the engine wrote, and what is firing now
SELECT alert_id, rule, sensor_id, state, severity,
       CASE WHEN rule <> 'al-offline' THEN value END AS value, silenced
  FROM pg_temp.shown ORDER BY alert_id;
SELECT rule, sensor_id FROM iotpipe.firing_alerts ORDER BY rule, sensor_id;

-- leave nothing behind for later tests
TRUNCATE iotpipe.alerts, iotpipe.silences, iotpipe.alert_rules RESTART IDENTITY CASCADE;
