-- The upgrade path: a database created at 0.1.0 (the frozen script in
-- sql/versions/) with data in it, then ALTER EXTENSION iotpipe UPDATE, must
-- have exactly the catalog of a fresh install of the current version
-- (sql/include/catalog_snapshot.sql lists what is compared), keep its data
-- and run the pipeline.  An object added to src/sql/ and forgotten in
-- sql/upgrade/ makes this test fail, and so does a changed function body,
-- grant, default, index or comment.  Both databases are new: the launcher
-- runs in iotpipe.database only, so no worker touches them.
\set VERBOSITY terse
SET client_min_messages = warning;
DROP DATABASE IF EXISTS iotpipe_upgrade_fresh;
DROP DATABASE IF EXISTS iotpipe_upgrade_old;
CREATE DATABASE iotpipe_upgrade_fresh;
CREATE DATABASE iotpipe_upgrade_old;

-- 1. a fresh install of the current version
\c iotpipe_upgrade_fresh
SET client_min_messages = warning;
SET timezone = 'UTC';
CREATE EXTENSION iotpipe;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'iotpipe')
       AS fresh_is_default_version
  FROM pg_extension WHERE extname = 'iotpipe';
\set ECHO none
\i sql/include/catalog_snapshot.sql
\set ECHO all
SELECT string_agg(l, E'\n') AS fresh_catalog, count(*) AS fresh_lines
  FROM pg_temp.iotpipe_catalog() l \gset
-- the comparison covers the whole surface, not a handful of lines
SELECT :fresh_lines > 500 AS snapshot_covers_the_surface;

-- 2. a 0.1.0 database with data in it
\c iotpipe_upgrade_old
SET client_min_messages = warning;
SET timezone = 'UTC';
CREATE EXTENSION iotpipe VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'iotpipe';
-- the library is newer than the SQL: its entry points refuse, with the hint
SELECT * FROM iotpipe.ingest_json(ARRAY['{"sensor_id":"up-x","ts":"2026-03-01T10:00:00Z","temperature":1}']);
SELECT count(*) AS partitions_made FROM iotpipe.create_partitions('2026-03-01', '2026-03-01');
INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location, ingested_at)
SELECT 'up-' || s, timestamptz '2026-03-01 10:00+00' + i * interval '1 minute',
       20 + s + (i % 5), 40 + (i % 3), 'plant-up', timestamptz '2026-03-01 12:00+00'
  FROM generate_series(1, 3) s, generate_series(0, 119) i;
INSERT INTO iotpipe.sensors (sensor_id, location, first_seen, last_seen)
SELECT 'up-' || s, 'plant-up', '2026-03-01 10:00+00', '2026-03-01 11:59+00' FROM generate_series(1, 3) s;
INSERT INTO iotpipe.dead_letters (source, payload, error) VALUES ('sql', '\x7b7d', 'missing sensor_id');
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, clear_threshold, severity)
VALUES ('up-hot', 'threshold', 'temperature', '>', 30, 28, 'critical');
INSERT INTO iotpipe.alert_rules (name, kind, for_duration, severity)
VALUES ('up-silent', 'offline', '10 minutes', 'warning');
INSERT INTO iotpipe.alert_rules (name, kind, metric, threshold, window_size, min_samples)
VALUES ('up-odd', 'anomaly', 'temperature', 3, 20, 10);
INSERT INTO iotpipe.alerts (rule_id, sensor_id, severity, state, value, started_at)
SELECT rule_id, 'up-3', 'critical', 'firing', 31, '2026-03-01 11:30+00' FROM iotpipe.alert_rules WHERE name = 'up-hot';
INSERT INTO iotpipe.kafka_sources (topic, brokers, group_id, workers, options, enabled)
VALUES ('up-readings', '127.0.0.1:1', 'iotpipe-up', 2, '{"fetch.wait.max.ms": "50"}', false);
INSERT INTO iotpipe.kafka_offsets (topic, partition, next_offset)
VALUES ('up-readings', 0, 1234), ('up-readings', 1, 99);
-- a warehouse run at 0.1.0: refused by the newer library, recorded as failed
SELECT status, rows_read, error FROM iotpipe.run_etl();
SELECT md5(string_agg(format('%s|%s|%s|%s|%s', sensor_id, ts, temperature, humidity, location), ','
                      ORDER BY sensor_id, ts)) AS readings_md5,
       count(*) AS readings_before FROM iotpipe.readings \gset
SELECT (SELECT count(*) FROM iotpipe.alert_rules) AS rules_before,
       (SELECT count(*) FROM iotpipe.alerts) AS alerts_before,
       (SELECT count(*) FROM iotpipe.kafka_sources) AS sources_before,
       (SELECT sum(next_offset) FROM iotpipe.kafka_offsets) AS offsets_before,
       (SELECT count(*) FROM iotpipe.etl_runs) AS runs_before,
       (SELECT count(*) FROM iotpipe.dead_letters) AS dead_before \gset

-- 3. the update
ALTER EXTENSION iotpipe UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'iotpipe')
       AS updated_to_default_version
  FROM pg_extension WHERE extname = 'iotpipe';

-- the catalog equals a fresh install's: no line only on one side
\set ECHO none
\i sql/include/catalog_snapshot.sql
\set ECHO all
WITH fresh AS (SELECT regexp_split_to_table(:'fresh_catalog', E'\n') AS line),
     upgraded AS (SELECT regexp_split_to_table(l, E'\n') AS line FROM pg_temp.iotpipe_catalog() l)
SELECT 'only in a fresh install' AS side, line FROM (SELECT line FROM fresh EXCEPT SELECT line FROM upgraded) f
UNION ALL
SELECT 'only after the update', line FROM (SELECT line FROM upgraded EXCEPT SELECT line FROM fresh) u
ORDER BY side, line;

-- the data is intact
SELECT md5(string_agg(format('%s|%s|%s|%s|%s', sensor_id, ts, temperature, humidity, location), ','
                      ORDER BY sensor_id, ts)) = :'readings_md5' AS readings_intact,
       count(*) = :readings_before AS readings_count_intact
  FROM iotpipe.readings;
SELECT (SELECT count(*) FROM iotpipe.alert_rules) = :rules_before AS rules_intact,
       (SELECT count(*) FROM iotpipe.alerts) = :alerts_before AS alerts_intact,
       (SELECT count(*) FROM iotpipe.kafka_sources) = :sources_before AS sources_intact,
       (SELECT sum(next_offset) FROM iotpipe.kafka_offsets) = :offsets_before AS offsets_intact,
       (SELECT count(*) FROM iotpipe.etl_runs) = :runs_before AS runs_intact,
       (SELECT count(*) FROM iotpipe.dead_letters) = :dead_before AS dead_letters_intact;
-- an anomaly rule of 0.1.0 keeps its statistic and threshold; a new one gets
-- the robust statistic and the default threshold (issue 13)
INSERT INTO iotpipe.alert_rules (name, kind, metric) VALUES ('up-odd-new', 'anomaly', 'temperature');
SELECT name, statistic, threshold, window_size, min_samples, warmup
  FROM iotpipe.alert_rules WHERE kind = 'anomaly' ORDER BY rule_id;
DELETE FROM iotpipe.alert_rules WHERE name = 'up-odd-new';

-- 4. the pipeline works on the updated database: ingest, alerts (the firing
-- alert of 0.1.0 resolves, a new one fires), the warehouse
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"up-3","ts":"2026-03-01T12:00:00Z","temperature":25,"location":"plant-up"}',
  '{"sensor_id":"up-1","ts":"2026-03-01T12:00:00Z","temperature":35,"location":"plant-up"}',
  '{"sensor_id":"up-2","ts":"2026-03-01T12:00:00Z","temperature":1e999}']);
SELECT a.sensor_id, a.state, a.value, a.started_at, a.resolved_at
  FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id)
 WHERE r.name = 'up-hot' ORDER BY a.alert_id;
SELECT status, rows_read, rows_written, hours_refreshed, error FROM iotpipe.run_etl();
SELECT s.sensor_id, h.hour_start, h.readings, h.temperature_min, h.temperature_max
  FROM iotpipe_dw.fact_sensor_hourly h JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
 ORDER BY 1, 2;
SELECT count(*) AS dead_letters FROM iotpipe.dead_letters;

\c iotpipe_regress
DROP DATABASE iotpipe_upgrade_fresh;
DROP DATABASE iotpipe_upgrade_old;
