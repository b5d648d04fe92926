-- Anomaly and drift rules with known answers (docs/alerts.md): the robust
-- statistic with its defaults, and drift.  Readings every 5 minutes (288 a
-- day, the default warm-up of 2 days is 576 readings), Gaussian noise from a
-- seeded generator, so every run sees the same values.  Sensors an-*.
SET timezone = 'UTC';
\set VERBOSITY terse
TRUNCATE iotpipe.alerts, iotpipe.silences, iotpipe.alert_rules RESTART IDENTITY CASCADE;
DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'an-%';
DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'an-%';

-- n values: level(i) + sd * N(0, 1), i = 1..n (level: an expression of $i), the noise seeded
CREATE FUNCTION pg_temp.series(n int, seed float8, sd float8, level text DEFAULT '20')
RETURNS float8[] LANGUAGE plpgsql AS $$
DECLARE
    out float8[] := '{}';
    f float8;
    i int;
BEGIN
    PERFORM setseed(seed);
    FOR i IN 1 .. n LOOP
        EXECUTE format('SELECT (%s)::float8', level) INTO f USING i;
        out := out || (f + sd * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()));
    END LOOP;
    RETURN out;
END $$;
-- feed(sensor, values, first index): reading k of a series at 2026-03-01 + 5 min * (k - 1)
CREATE FUNCTION pg_temp.feed(sensor text, vals float8[], first int DEFAULT 1)
RETURNS bigint LANGUAGE sql AS $$
  SELECT accepted FROM iotpipe.ingest_json(ARRAY(
    SELECT json_build_object('sensor_id', sensor,
                             'ts', to_char(timestamptz '2026-03-01 00:00+00'
                                           + interval '5 minutes' * (first + i - 2),
                                           'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                             'temperature', round(vals[i]::numeric, 4))::text
      FROM generate_subscripts(vals, 1) AS i ORDER BY i))
$$;
-- reading index of an event time
CREATE FUNCTION pg_temp.k(ts timestamptz) RETURNS int LANGUAGE sql AS $$
  SELECT (extract(epoch FROM ts - timestamptz '2026-03-01 00:00+00') / 300)::int + 1
$$;
CREATE VIEW pg_temp.shown AS
  SELECT r.name AS rule, a.sensor_id, a.state, pg_temp.k(a.started_at) AS fired_at,
         pg_temp.k(a.resolved_at) AS resolved_at, round(a.reading::numeric, 2) AS reading,
         round(a.baseline::numeric, 1) AS baseline, round(a.scale::numeric, 1) AS scale,
         round(a.score::numeric, 0) AS score, a.value > a.threshold AS above_threshold
    FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id);

-- the defaults of a new rule: statistic robust, threshold NULL (robust: 6,
-- drift: 50), window_size 60, min_samples 30, warmup 2 days
INSERT INTO iotpipe.alert_rules (name, kind, metric, location)
VALUES ('an-anomaly', 'anomaly', 'temperature', 'an'),
       ('an-drift', 'drift', 'temperature', 'an');
SELECT name, kind, statistic, threshold, window_size, min_samples, warmup
  FROM iotpipe.alert_rules ORDER BY rule_id;
-- every sensor below is at location an, so both rules watch it
CREATE FUNCTION pg_temp.place(sensor text) RETURNS bigint LANGUAGE sql AS $$
  SELECT accepted FROM iotpipe.ingest_json(ARRAY[json_build_object(
      'sensor_id', sensor, 'ts', '2026-02-28T23:55:00Z', 'temperature', 20, 'location', 'an')::text])
$$;

-- 1. a spike: 1000 normal readings (20 +- 0.5), one of 30, 500 normal ones:
-- one anomaly alert at reading 1001, resolved soon after; no drift
SELECT pg_temp.place('an-spike');
SELECT pg_temp.feed('an-spike', pg_temp.series(1000, 0.1, 0.5));
SELECT pg_temp.feed('an-spike', '{30}', 1001);
SELECT pg_temp.feed('an-spike', pg_temp.series(500, 0.2, 0.5), 1002);
SELECT * FROM pg_temp.shown WHERE sensor_id = 'an-spike' ORDER BY fired_at;

-- 2. a step: 20 -> 25 at reading 1001, then 2000 readings at the new level:
-- the anomaly rule fires once at the step and resolves; the new level is
-- normal after that.  The drift rule sees the level change too, once.
SELECT pg_temp.place('an-step');
SELECT pg_temp.feed('an-step', pg_temp.series(1000, 0.3, 0.5));
SELECT pg_temp.feed('an-step', pg_temp.series(2000, 0.4, 0.5, '25'), 1001);
SELECT * FROM pg_temp.shown WHERE sensor_id = 'an-step' ORDER BY fired_at;

-- 3. a slow drift: 1000 readings at 20, then 0.02 per reading (a scale
-- every 30 readings: the EWMA's lag stays about one scale, so no reading
-- is anomalous) for 500 readings and 1000 more at the end level: the
-- drift rule fires, once, and resolves once the level holds
SELECT pg_temp.place('an-slow');
SELECT pg_temp.feed('an-slow', pg_temp.series(1000, 0.5, 0.5));
SELECT pg_temp.feed('an-slow', pg_temp.series(500, 0.6, 0.5, '20 + 0.02 * $1'), 1001);
SELECT pg_temp.feed('an-slow', pg_temp.series(1000, 0.7, 0.5, '30'), 1501);
SELECT * FROM pg_temp.shown WHERE sensor_id = 'an-slow' ORDER BY fired_at;

-- 4. a stuck sensor: 1000 normal readings, 300 times the same value at the
-- level, then normal again.  Stuck at its level, its values are not
-- anomalous: nothing fires while it is stuck.  Its scale shrinks meanwhile,
-- so its return to the usual noise fires once (docs/alerts.md: what the
-- statistics cannot see)
SELECT pg_temp.place('an-stuck');
SELECT pg_temp.feed('an-stuck', pg_temp.series(1000, 0.8, 0.5));
SELECT pg_temp.feed('an-stuck', array_fill(20.0::float8, ARRAY[300]), 1001);
SELECT pg_temp.feed('an-stuck', pg_temp.series(1000, 0.9, 0.5), 1301);
SELECT * FROM pg_temp.shown WHERE sensor_id = 'an-stuck' ORDER BY fired_at;

-- 5. noisy but normal: 10,000 readings of 20 +- 2 fire nothing
SELECT pg_temp.place('an-noisy');
SELECT pg_temp.feed('an-noisy', pg_temp.series(10000, 0.15, 2));
SELECT count(*) AS noisy_alerts FROM pg_temp.shown WHERE sensor_id = 'an-noisy';

-- 6. a daily cycle (20 +- 5 over the day, noise 0.3) for 10 days is not an
-- anomaly; the same day with its cycle missing (flat at 20 from 08:00 to
-- 16:00 on day 11, where it should be 24-25) is
SELECT pg_temp.place('an-daily');
SELECT pg_temp.feed('an-daily', pg_temp.series(2880, 0.25, 0.3, '20 + 5 * sin(2 * pi() * $1 / 288)'));
SELECT count(*) AS daily_alerts FROM pg_temp.shown WHERE sensor_id = 'an-daily';
SELECT pg_temp.feed('an-daily', pg_temp.series(288, 0.35, 0.3,
    'CASE WHEN $1 BETWEEN 96 AND 192 THEN 20 ELSE 20 + 5 * sin(2 * pi() * $1 / 288) END'), 2881);
SELECT rule, fired_at, fired_at BETWEEN 2880 + 96 AND 2880 + 192 AS in_the_flat_part, above_threshold
  FROM pg_temp.shown WHERE sensor_id = 'an-daily' ORDER BY fired_at;

-- 7. the payloads built in SQL (offline timer, end of a silence, a rule
-- disabled) carry no baseline, scale or score; the engine's do
-- (test/integration/test_alerts.py)
SELECT count(*) AS explain_keys_from_sql
  FROM jsonb_object_keys(iotpipe._alert_payload(1, 1, 'r', 'anomaly', 's', NULL, 'firing', 'info',
                                                'temperature', NULL, 7, 30, 6, now(), now())::jsonb) k
 WHERE k IN ('baseline', 'scale', 'score');
-- the robust rules' alerts all have them
SELECT count(*) AS alerts, count(baseline) AS with_baseline, count(scale) AS with_scale,
       count(score) AS with_score
  FROM iotpipe.alerts;

-- 8. rules are checked: statistic, warmup, a drift threshold
INSERT INTO iotpipe.alert_rules (name, kind, metric, statistic) VALUES ('an-bad-stat', 'anomaly', 'temperature', 'magic');
INSERT INTO iotpipe.alert_rules (name, kind, metric, warmup) VALUES ('an-bad-warmup', 'anomaly', 'temperature', '-1 day');
INSERT INTO iotpipe.alert_rules (name, kind, metric, threshold) VALUES ('an-bad-drift', 'drift', 'temperature', -5);
