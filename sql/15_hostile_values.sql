-- Values that used to stall the pipeline (issue 11, cases 10 and 13):
-- magnitudes no sensor reports, values inserted into iotpipe.readings by
-- hand (1e300, NaN, Infinity), rule parameters that overflow, too many rules,
-- per-sensor state for rules out of scope.  Sensors here are hv-*.
SET timezone = 'UTC';
SET client_min_messages = warning;   -- run_etl reports progress as NOTICEs
\set VERBOSITY terse
TRUNCATE iotpipe.alerts, iotpipe.silences, iotpipe.alert_rules RESTART IDENTITY CASCADE;
TRUNCATE iotpipe.readings, iotpipe.dead_letters;
SELECT iotpipe.reset_warehouse();

CREATE FUNCTION pg_temp.feed(sensor text, t0 timestamptz, vals float8[])
RETURNS bigint LANGUAGE sql AS $$
  SELECT accepted FROM iotpipe.ingest_json(ARRAY(
    SELECT json_build_object('sensor_id', sensor,
                             'ts', to_char(t0 + interval '1 minute' * (i - 1),
                                           'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                             'temperature', vals[i])::text
      FROM generate_subscripts(vals, 1) AS i ORDER BY i))
$$;

-- 1. magnitudes: 1e200 and 10000.5 °C are dead letters with their reason;
-- 140 °C and 10000 °C (the bound) are accepted
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, threshold, window_size, min_samples, statistic)
VALUES ('hv-anom', 'anomaly', 'temperature', 'hv-a1', 4, 20, 10, 'zscore');
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id": "hv-a1", "ts": "2026-03-01T10:00:00Z", "temperature": 1e200}',
  '{"sensor_id": "hv-a1", "ts": "2026-03-01T10:00:01Z", "temperature": -1e200}',
  '{"sensor_id": "hv-a1", "ts": "2026-03-01T10:00:02Z", "temperature": 10000.5}',
  '{"sensor_id": "hv-b1", "ts": "2026-03-01T10:00:00Z", "temperature": 140}',
  '{"sensor_id": "hv-b1", "ts": "2026-03-01T10:00:01Z", "temperature": 10000}']);
SELECT error, convert_from(payload, 'UTF8') AS payload FROM iotpipe.dead_letters ORDER BY id;
SELECT sensor_id, temperature FROM iotpipe.readings WHERE sensor_id LIKE 'hv-%' ORDER BY ts;

-- 2. the anomaly rule of hv-a1 was not poisoned: 30 ordinary readings, then
-- a jump to 35 fires, the return to normal resolves
SELECT pg_temp.feed('hv-a1', '2026-03-01 10:01+00',
                    ARRAY(SELECT 20 + (i % 3) * 0.5 FROM generate_series(1, 30) i));
SELECT count(*) AS alerts_before_jump FROM iotpipe.alerts;
SELECT pg_temp.feed('hv-a1', '2026-03-01 10:31+00', '{35, 20.5, 20, 20.5}');
SELECT r.name, a.state, round(a.value::numeric, 1) > 4 AS beyond_threshold, a.reading
  FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id) ORDER BY alert_id;

-- 3. the ETL over rows a DBA inserted by hand: 1e300, -1e300, NaN,
-- Infinity, -Infinity and a humidity of 1e300 next to ordinary readings.
-- run_etl() succeeds; the absurd values are kept in fact_reading, flagged
-- as outliers and left out of the hourly and daily statistics.
INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity)
SELECT 'hv-e1', '2026-03-01 12:00+00'::timestamptz + interval '1 minute' * i, 20 + (i % 2), 50
  FROM generate_series(0, 9) i;
INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity) VALUES
  ('hv-e1', '2026-03-01 12:30+00', 1e300, 50),
  ('hv-e1', '2026-03-01 12:31+00', -1e300, 50),
  ('hv-e1', '2026-03-01 12:32+00', 'NaN', 50),
  ('hv-e1', '2026-03-01 12:33+00', 'Infinity', 50),
  ('hv-e1', '2026-03-01 12:34+00', '-Infinity', 50),
  ('hv-e1', '2026-03-01 12:35+00', 21, 1e300),
  ('hv-e1', '2026-03-01 13:00+00', 1e300, 1e300);
SELECT status, rows_read, error FROM iotpipe.run_etl();
SELECT f.ts, f.temperature, f.humidity, f.is_outlier
  FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
 WHERE d.sensor_id = 'hv-e1' AND (f.ts >= '2026-03-01 12:30+00' OR f.is_outlier)
 ORDER BY f.ts;
SELECT h.hour_start, h.readings, h.temperature_n, h.temperature_avg, h.temperature_min,
       h.temperature_max, round(h.temperature_stddev::numeric, 4) AS t_sd, h.humidity_n,
       h.humidity_max, h.outliers, h.anomalies
  FROM iotpipe_dw.fact_sensor_hourly h JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
 WHERE d.sensor_id = 'hv-e1' ORDER BY h.hour_start;
SELECT y.readings, y.temperature_avg, y.temperature_max, round(y.temperature_stddev::numeric, 4) AS t_sd,
       y.humidity_max, y.anomalies
  FROM iotpipe_dw.fact_sensor_daily y JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
 WHERE d.sensor_id = 'hv-e1';
-- and the next run too (it re-reads the hours around new rows)
INSERT INTO iotpipe.readings (sensor_id, ts, temperature) VALUES ('hv-e1', '2026-03-01 12:36+00', 1e308);
SELECT status, rows_read, error FROM iotpipe.run_etl();

-- 4. rule bounds, with named constraints
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, for_duration)
VALUES ('hv-forever', 'threshold', 'temperature', '>', 40, '1000000 years');
INSERT INTO iotpipe.alert_rules (name, kind, for_duration) VALUES ('hv-offline-forever', 'offline', '1000000 years');
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, rate_window)
VALUES ('hv-slow', 'rate', 'temperature', '>', 1, '10 years');
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold)
VALUES (repeat('n', 129), 'threshold', 'temperature', '>', 40);
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold) VALUES ('', 'threshold', 'temperature', '>', 40);
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold)
VALUES ('hv-inf', 'threshold', 'temperature', '>', 'Infinity');
INSERT INTO iotpipe.alert_rules (name, kind, metric, threshold, window_size)
VALUES ('hv-wide', 'anomaly', 'temperature', 4, 1000000);
-- the largest allowed values work: a year-long offline rule does not fire,
-- and the timer runs (it used to fail with "timestamp out of range")
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, for_duration, rate_window)
VALUES (repeat('n', 128), 'threshold', 'temperature', '>', 40, '366 days', '1 day'),
       ('hv-year-offline', 'offline', NULL, NULL, NULL, '366 days', '1 minute');
SELECT pg_temp.feed('hv-f1', '2026-03-01 10:00+00', '{50, 51}');
SELECT count(*) AS year_rule_alerts FROM iotpipe.alerts WHERE rule_id IN
  (SELECT rule_id FROM iotpipe.alert_rules WHERE name IN (repeat('n', 128), 'hv-year-offline'));
SELECT iotpipe._alert_timers('2026-03-02 10:00+00') AS timer_alerts;

-- 5. at most 10000 enabled rules, refused when added, not dropped silently
TRUNCATE iotpipe.alerts, iotpipe.alert_rules RESTART IDENTITY CASCADE;
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold)
SELECT 'hv-many-' || i, 'threshold', 'temperature', 'hv-m' || i, '>', 40
  FROM generate_series(1, 10000) i;
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold)
VALUES ('hv-one-too-many', 'threshold', 'temperature', 'hv-m1', '>', 30);
-- a disabled rule is fine, enabling it is not
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, enabled)
VALUES ('hv-one-too-many', 'threshold', 'temperature', 'hv-m1', '>', 30, false);
UPDATE iotpipe.alert_rules SET enabled = true WHERE name = 'hv-one-too-many';
SELECT count(*) FILTER (WHERE enabled) AS enabled, count(*) AS rules FROM iotpipe.alert_rules;

-- 6. per-sensor state only for the rules in the sensor's scope: 10000
-- rules scoped to other sensors cost 200 sensors next to nothing
SELECT count(*) AS accepted FROM (
  SELECT pg_temp.feed('hv-s' || i, '2026-03-01 10:00+00', '{20}') FROM generate_series(1, 200) i) x;
SELECT total_bytes < 4 * 1024 * 1024 AS engine_small
  FROM pg_backend_memory_contexts WHERE name = 'iotpipe alerts';
-- while the last rule (rule_id 10000) still fires for its own sensor
SELECT pg_temp.feed('hv-m10000', '2026-03-01 10:00+00', '{41}');
SELECT rule_id, sensor_id, state FROM iotpipe.alerts;

-- leave nothing behind
TRUNCATE iotpipe.alerts, iotpipe.silences, iotpipe.alert_rules RESTART IDENTITY CASCADE;
TRUNCATE iotpipe.readings, iotpipe.dead_letters;
DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'hv-%';
SELECT iotpipe.reset_warehouse();
