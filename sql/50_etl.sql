-- The batch ETL into iotpipe_dw on fixed data: exact hourly aggregates,
-- dedup (first ingested wins), flags, SCD2, idempotency, late data, until,
-- empty runs, from-scratch equality, retention.
SET client_min_messages = warning;   -- run_etl reports progress as NOTICEs
SET timezone = 'UTC';
-- earlier tests leave readings behind: start from nothing
TRUNCATE iotpipe.readings, iotpipe.dead_letters;
SELECT iotpipe.reset_warehouse();

CREATE TEMP VIEW hourly AS
  SELECT d.sensor_id, d.version, l.location, h.hour_start, h.readings,
         h.temperature_avg AS t_avg, h.temperature_min AS t_min, h.temperature_max AS t_max,
         round(h.temperature_stddev::numeric, 4) AS t_sd,
         h.humidity_avg AS h_avg, h.humidity_min AS h_min, h.humidity_max AS h_max,
         round(h.humidity_stddev::numeric, 4) AS h_sd,
         h.anomalies, h.outliers, h.stuck, h.duplicates
    FROM iotpipe_dw.fact_sensor_hourly h
    JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
    JOIN iotpipe_dw.dim_location l ON l.location_key = h.location_key
   ORDER BY d.sensor_id, d.version, h.hour_start;
-- the whole warehouse, by natural keys, as one digest
CREATE TEMP VIEW digest AS
  SELECT md5(string_agg(x, '|' ORDER BY x)) AS md5, count(*) AS n FROM (
    SELECT format('f %s %s %s %s %s %s %s %s %s %s %s', d.sensor_id, d.version, f.ts, f.date_key, f.time_key,
                  f.temperature, f.humidity, f.copies, f.is_duplicate, f.is_outlier, f.is_stuck) AS x
      FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
    UNION ALL
    SELECT format('h %s %s %s %s %s %s %s %s %s %s %s %s', d.sensor_id, d.version, h.hour_start, h.readings,
                  round(h.temperature_avg::numeric, 9), h.temperature_min, h.temperature_max,
                  round(h.temperature_stddev::numeric, 9), round(h.humidity_avg::numeric, 9),
                  h.anomalies, h.stuck, h.duplicates)
      FROM iotpipe_dw.fact_sensor_hourly h JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
    UNION ALL
    SELECT format('d %s %s %s %s %s %s %s', d.sensor_id, d.version, y.date_key, y.readings,
                  round(y.temperature_avg::numeric, 9), round(y.temperature_stddev::numeric, 9), y.anomalies)
      FROM iotpipe_dw.fact_sensor_daily y JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
    UNION ALL
    SELECT format('s %s %s %s %s %s %s', d.sensor_id, d.version, l.location, d.valid_from, d.valid_to, d.is_current)
      FROM iotpipe_dw.dim_sensor d JOIN iotpipe_dw.dim_location l USING (location_key)) w;

-- an empty run: nothing to read, still a row in etl_runs
SELECT status, rows_read, rows_written, hours_refreshed, window_start, error FROM iotpipe.run_etl();
SELECT count(*) AS runs, bool_and(snapshot IS NOT NULL AND watermark = pg_snapshot_xmin(snapshot)) AS watermark_kept
  FROM iotpipe.etl_runs;

-- etl-a: one reading every 10 minutes from 10:00 to 12:50, a spike at 12:40;
-- 10:00 arrives three times (twice in this batch, once later): the first wins
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:00:00Z","temperature":20.0,"humidity":40.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:00:00Z","temperature":99.0,"humidity":99.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:10:00Z","temperature":21.0,"humidity":41.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:20:00Z","temperature":22.0,"humidity":42.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:30:00Z","temperature":23.0,"humidity":43.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:40:00Z","temperature":24.0,"humidity":44.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:50:00Z","temperature":25.0,"humidity":45.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T11:00:00Z","temperature":22.5,"humidity":40.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T11:10:00Z","temperature":22.0,"humidity":40.5,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T11:20:00Z","temperature":22.5,"humidity":40.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T11:30:00Z","temperature":22.0,"humidity":40.5,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T12:00:00Z","temperature":21.0,"humidity":41.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T12:10:00Z","temperature":21.5,"humidity":41.5,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T12:20:00Z","temperature":21.0,"humidity":41.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T12:30:00Z","temperature":21.5,"humidity":41.5,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T12:40:00Z","temperature":60.0,"humidity":41.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T12:50:00Z","temperature":21.0,"humidity":41.5,"location":"plant-a/line-1"}'
]);
-- etl-b: stuck at 35/25 for six readings; etl-c: humidity only, no location
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:00:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:05:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:10:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:15:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:20:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:25:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:30:00Z","temperature":36.0,"humidity":24.0,"location":"plant-b/furnace"}',
 '{"sensor_id":"etl-c","ts":"2026-03-01T23:59:59.999Z","humidity":50.0}',
 '{"sensor_id":"etl-c","ts":"2026-03-02T00:00:00Z","humidity":52.0}'
]);
SELECT status, rows_read, rows_written, hours_refreshed, days_refreshed, sensor_versions,
       window_start, window_end FROM iotpipe.run_etl();
-- exact hourly aggregates
SELECT * FROM hourly;
-- the flags, reading by reading where one is set
SELECT d.sensor_id, f.ts, f.temperature, f.humidity, f.copies, f.is_duplicate, f.is_outlier, f.is_stuck
  FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
 WHERE f.is_duplicate OR f.is_outlier OR f.is_stuck ORDER BY 1, 2;
-- dimensions and keys
SELECT sensor_id, version, location, site, area, valid_from, valid_to, is_current
  FROM iotpipe_dw.dim_sensor JOIN iotpipe_dw.dim_location USING (location_key) ORDER BY 1, 2;
SELECT date_key, date, year, quarter, month, month_name, day, iso_week, day_of_week, day_name, is_weekend
  FROM iotpipe_dw.dim_date ORDER BY 1;
SELECT f.ts, f.date_key, f.time_key, t.hh_mm, t.day_part
  FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_time t USING (time_key)
 WHERE f.ts IN ('2026-03-01 23:59:59.999+00', '2026-03-01 10:50+00') ORDER BY 1;
SELECT d.sensor_id, y.date_key, y.readings, y.hours_with_data, y.temperature_avg, y.temperature_min,
       y.temperature_max, round(y.temperature_stddev::numeric, 4) AS t_sd, y.humidity_avg,
       round(y.humidity_stddev::numeric, 4) AS h_sd, y.anomalies, y.duplicates
  FROM iotpipe_dw.fact_sensor_daily y JOIN iotpipe_dw.dim_sensor d USING (sensor_key) ORDER BY 1, 2;
-- the daily roll-up equals aggregating the day's facts directly
SELECT bool_and(abs(y.temperature_avg - x.t_avg) < 1e-9
                AND abs(coalesce(y.temperature_stddev, 0) - coalesce(x.t_sd, 0)) < 1e-9
                AND abs(y.humidity_avg - x.h_avg) < 1e-9
                AND abs(coalesce(y.humidity_stddev, 0) - coalesce(x.h_sd, 0)) < 1e-9
                AND y.readings = x.n) AS daily_matches_facts
  FROM iotpipe_dw.fact_sensor_daily y
  JOIN (SELECT sensor_key, date_key, count(*) AS n, avg(temperature) AS t_avg, stddev(temperature) AS t_sd,
               avg(humidity) AS h_avg, stddev(humidity) AS h_sd
          FROM iotpipe_dw.fact_reading GROUP BY 1, 2) x USING (sensor_key, date_key);

-- a run with nothing new changes nothing
SELECT md5 AS before FROM digest \gset
SELECT status, rows_read, rows_written, hours_refreshed FROM iotpipe.run_etl();
SELECT md5 = :'before' AS unchanged FROM digest;

-- late data: 10:55 and a third copy of 10:00 (it loses: the first ingested
-- wins); hour 10 of etl-a is re-aggregated, nothing else changes
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:55:00Z","temperature":26.0,"humidity":46.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T10:00:00Z","temperature":77.0,"humidity":77.0,"location":"plant-a/line-1"}'
]);
SELECT status, rows_read, rows_written, hours_refreshed, days_refreshed FROM iotpipe.run_etl();
SELECT * FROM hourly WHERE sensor_id = 'etl-a' AND hour_start = '2026-03-01 10:00+00';
SELECT temperature, copies FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
 WHERE d.sensor_id = 'etl-a' AND f.ts = '2026-03-01 10:00+00';

-- SCD2: etl-b moves to plant-b/assembly at 14:00, version 2 from then on;
-- a late reading from 10:02 in the same run belongs to version 1.  It
-- lengthens the stuck run: 10:15 is now the fifth identical reading in a
-- row, and the hour is re-flagged.
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-b","ts":"2026-03-01T14:00:00Z","temperature":22.0,"humidity":45.0,"location":"plant-b/assembly"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T14:10:00Z","temperature":22.5,"humidity":45.0,"location":"plant-b/assembly"}',
 '{"sensor_id":"etl-b","ts":"2026-03-01T10:02:00Z","temperature":35.0,"humidity":25.0,"location":"plant-b/furnace"}'
]);
SELECT status, rows_read, rows_written, sensor_versions FROM iotpipe.run_etl();
SELECT sensor_id, version, location, valid_from, valid_to, is_current
  FROM iotpipe_dw.dim_sensor JOIN iotpipe_dw.dim_location USING (location_key)
 WHERE sensor_id = 'etl-b' ORDER BY version;
SELECT sensor_id, version, location, hour_start, readings, t_avg, anomalies, outliers, stuck FROM hourly WHERE sensor_id = 'etl-b';
SELECT f.ts, f.temperature, f.is_outlier, f.is_stuck
  FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
 WHERE d.sensor_id = 'etl-b' ORDER BY f.ts;

-- until: later event times wait for a later run
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-a","ts":"2026-03-01T15:00:00Z","temperature":21.0,"humidity":41.0,"location":"plant-a/line-1"}',
 '{"sensor_id":"etl-a","ts":"2026-03-01T16:00:00Z","temperature":21.0,"humidity":41.0,"location":"plant-a/line-1"}'
]);
SELECT status, rows_read, rows_deferred, rows_written, until FROM iotpipe.run_etl('2026-03-01 15:30+00');
SELECT count(*) AS pending FROM iotpipe.etl_pending;
SELECT status, rows_read, rows_deferred, rows_written FROM iotpipe.run_etl();
SELECT count(*) AS pending FROM iotpipe.etl_pending;
SELECT hour_start, readings FROM hourly WHERE sensor_id = 'etl-a' AND hour_start >= '2026-03-01 15:00+00';

-- the run history
SELECT run_id, status, rows_read, rows_written, hours_refreshed, finished_at >= started_at AS timed
  FROM iotpipe.etl_runs ORDER BY run_id;

-- running again changes nothing; rebuilding from scratch gives the same warehouse
SELECT md5 AS incremental, n FROM digest \gset
SELECT rows_read FROM iotpipe.run_etl();
SELECT md5 = :'incremental' AS idempotent FROM digest;
SELECT iotpipe.reset_warehouse();
SELECT status, rows_read, rows_written FROM iotpipe.run_etl();
SELECT md5 = :'incremental' AS same_as_incremental, n = :n AS same_rows FROM digest;


-- run_etl needs read committed: its snapshot must follow the lock
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT rows_read FROM iotpipe.run_etl();
ROLLBACK;

-- a warehouse table altered by hand: the run fails with the reason, keeps
-- nothing, and the next run after the repair takes the same readings; a
-- dropped column is fine, for incremental and full loads alike
SELECT count(*) AS facts_before FROM iotpipe_dw.fact_reading \gset
ALTER TABLE iotpipe_dw.fact_reading ADD COLUMN note text;
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-a","ts":"2026-03-01T17:00:00Z","temperature":21.5,"humidity":40.0,"location":"plant-a/line-1"}']);
SELECT status, rows_read, error FROM iotpipe.run_etl();
ALTER TABLE iotpipe_dw.fact_reading DROP COLUMN note;
SELECT status, rows_read, rows_written FROM iotpipe.run_etl();
SELECT count(*) = :facts_before + 1 AS one_more FROM iotpipe_dw.fact_reading;
SELECT md5 AS altered FROM digest \gset
SELECT iotpipe.reset_warehouse();
SELECT status, rows_written FROM iotpipe.run_etl();
SELECT md5 = :'altered' AS rebuilt_same FROM digest;

-- retention: only processed partitions older than the retention go
SELECT iotpipe.create_partitions('2026-01-10', '2026-01-11');
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-a","ts":"2026-01-10T12:00:00Z","temperature":21.0}']);
SELECT iotpipe.apply_retention(interval '0');   -- 0 keeps everything
SELECT iotpipe.apply_retention(now() - timestamptz '2026-01-12 00:00+00') >= 1 AS ran;
SELECT to_regclass('iotpipe.readings_p20260110') IS NOT NULL AS still_there,
       to_regclass('iotpipe.readings_p20260111') IS NULL AS empty_processed_dropped;
SELECT rows_read FROM iotpipe.run_etl();
SELECT iotpipe.apply_retention(now() - timestamptz '2026-01-12 00:00+00') >= 1 AS dropped;
SELECT to_regclass('iotpipe.readings_p20260110') IS NULL AS gone,
       EXISTS (SELECT FROM iotpipe.readings WHERE ts >= '2026-03-01 00:00+00' AND ts < '2026-03-02 00:00+00') AS newer_kept;
-- the warehouse keeps what the raw table no longer has
SELECT count(*) FROM iotpipe_dw.fact_reading f WHERE f.ts = '2026-01-10 12:00+00';


-- a coarse partition goes only when its whole range is past the retention:
-- readings_p2004 (a year, made for old data) stays at a cutoff of
-- 2004-12-01 and goes at 2005-01-01
SELECT * FROM iotpipe.ingest_json(ARRAY[
 '{"sensor_id":"etl-old","ts":"2004-06-01T00:00:00Z","temperature":20.0}']);
SELECT to_regclass('iotpipe.readings_p2004') IS NOT NULL AS year_made;
SELECT rows_read FROM iotpipe.run_etl();
SELECT iotpipe.apply_retention(now() - timestamptz '2004-12-01 00:00+00') AS dropped_early;
SELECT to_regclass('iotpipe.readings_p2004') IS NOT NULL AS year_kept;
SELECT iotpipe.apply_retention(now() - timestamptz '2005-01-01 00:00+00') AS dropped_at_year_end;
SELECT to_regclass('iotpipe.readings_p2004') IS NULL AS year_dropped;
