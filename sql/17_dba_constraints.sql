-- Constraints and triggers a DBA adds to iotpipe.readings (issue 11, case 12):
-- the rows they refuse become dead letters naming the constraint, with the
-- exact message; every other row of the batch lands, once, and the alerts
-- and iotpipe.sensors see only the rows that landed.  And iotpipe.sensors
-- counts exactly what iotpipe.readings holds when a savepoint rolls back
-- (case 16).  Sensors here are dba-*.
SET timezone = 'UTC';
TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters;
TRUNCATE iotpipe.alerts, iotpipe.silences, iotpipe.alert_rules RESTART IDENTITY CASCADE;
SELECT iotpipe.create_partitions('2026-11-28', '2026-11-29') >= 0 AS made;

-- counters that differ from the readings (none expected)
CREATE VIEW pg_temp.drift AS
  SELECT coalesce(s.sensor_id, r.sensor_id) AS sensor_id, s.readings_total, r.n AS readings
    FROM iotpipe.sensors s
    FULL JOIN (SELECT sensor_id, count(*) AS n FROM iotpipe.readings GROUP BY 1) r USING (sensor_id)
   WHERE s.readings_total IS DISTINCT FROM r.n;
CREATE VIEW pg_temp.letters AS
  SELECT source, convert_from(payload, 'UTF8') AS payload, error
    FROM iotpipe.dead_letters ORDER BY id;

-- 1. a CHECK on the table: the hot readings are refused, the rest land, and
--    the alert rule sees only the readings that landed (60 fires, 120 and
--    300 never reach it)
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold, severity)
VALUES ('dba-hot', 'threshold', 'temperature', NULL, '>', 50, 'warning');
ALTER TABLE iotpipe.readings ADD CONSTRAINT temperature_below_100 CHECK (temperature < 100);
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-a","ts":"2026-11-28T10:00:00Z","temperature":20}',
  '{"sensor_id":"dba-a","ts":"2026-11-28T10:00:01Z","temperature":120}',
  'not json',
  '{"sensor_id":"dba-b","ts":"2026-11-28T10:00:02Z", "temperature" : 300, "x":1}',
  '{"sensor_id":"dba-b","ts":"2026-11-28T10:00:03Z","temperature":60}']);
SELECT sensor_id, ts, temperature FROM iotpipe.readings ORDER BY ts;
SELECT sensor_id, state, value FROM iotpipe.alerts ORDER BY alert_id;
SELECT * FROM pg_temp.letters;
SELECT * FROM pg_temp.drift;
ALTER TABLE iotpipe.readings DROP CONSTRAINT temperature_below_100;
TRUNCATE iotpipe.alerts, iotpipe.alert_rules RESTART IDENTITY CASCADE;
TRUNCATE iotpipe.dead_letters;

-- 2. a CHECK on one partition only: that day's humid readings are refused
ALTER TABLE iotpipe.readings_p20261128 ADD CONSTRAINT dry_day CHECK (humidity < 90);
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-c","ts":"2026-11-28T11:00:00Z","humidity":95}',
  '{"sensor_id":"dba-c","ts":"2026-11-29T11:00:00Z","humidity":95}',
  '{"sensor_id":"dba-c","ts":"2026-11-28T11:00:01Z","humidity":50}']);
SELECT sensor_id, ts, humidity FROM iotpipe.readings WHERE sensor_id = 'dba-c' ORDER BY ts;
SELECT * FROM pg_temp.letters;
ALTER TABLE iotpipe.readings_p20261128 DROP CONSTRAINT dry_day;
TRUNCATE iotpipe.dead_letters;

-- 3. a unique index: a repeat of a stored reading and a repeat inside the
--    batch are refused, the first of each lands
CREATE UNIQUE INDEX readings_once ON iotpipe.readings (sensor_id, ts);
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-a","ts":"2026-11-28T10:00:00Z","temperature":21}',
  '{"sensor_id":"dba-d","ts":"2026-11-28T12:00:00Z","temperature":1}',
  '{"sensor_id":"dba-d","ts":"2026-11-28T12:00:00Z","temperature":2}',
  '{"sensor_id":"dba-d","ts":"2026-11-28T12:00:01Z","temperature":3}']);
SELECT sensor_id, ts, temperature FROM iotpipe.readings WHERE sensor_id IN ('dba-a', 'dba-d') ORDER BY ts, sensor_id;
SELECT * FROM pg_temp.letters;
SELECT * FROM pg_temp.drift;
DROP INDEX iotpipe.readings_once;
TRUNCATE iotpipe.dead_letters;

-- 4. NOT NULL on an optional field, and a foreign key (checked by a trigger:
--    the COPY path), on an empty table
TRUNCATE iotpipe.readings, iotpipe.sensors;
ALTER TABLE iotpipe.readings ALTER COLUMN location SET NOT NULL;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-e","ts":"2026-11-28T13:00:00Z","temperature":1,"location":"hall"}',
  '{"sensor_id":"dba-e","ts":"2026-11-28T13:00:01Z","temperature":2}']);
ALTER TABLE iotpipe.readings ALTER COLUMN location DROP NOT NULL;
CREATE TABLE public.registered (sensor_id text COLLATE "C" PRIMARY KEY);
INSERT INTO public.registered VALUES ('dba-e'), ('dba-f');
ALTER TABLE iotpipe.readings ADD CONSTRAINT readings_registered
  FOREIGN KEY (sensor_id) REFERENCES public.registered;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-f","ts":"2026-11-28T13:00:00Z","temperature":1}',
  '{"sensor_id":"dba-rogue","ts":"2026-11-28T13:00:01Z","temperature":2}']);
ALTER TABLE iotpipe.readings DROP CONSTRAINT readings_registered;
-- deferred: checked at the caller's commit, which fails; made immediate
-- by the caller, it refuses the row in the call
ALTER TABLE iotpipe.readings ADD CONSTRAINT readings_registered_later
  FOREIGN KEY (sensor_id) REFERENCES public.registered DEFERRABLE INITIALLY DEFERRED;
BEGIN;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-rogue","ts":"2026-11-28T13:00:02Z","temperature":2}']);
\set VERBOSITY terse
COMMIT;
\set VERBOSITY default
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-f","ts":"2026-11-28T13:00:03Z","temperature":1}',
  '{"sensor_id":"dba-rogue","ts":"2026-11-28T13:00:03Z","temperature":2}']);
COMMIT;
ALTER TABLE iotpipe.readings DROP CONSTRAINT readings_registered_later;
DROP TABLE public.registered;
SELECT sensor_id, ts FROM iotpipe.readings WHERE sensor_id LIKE 'dba-e%' OR sensor_id LIKE 'dba-f%' OR sensor_id = 'dba-rogue' ORDER BY ts;
SELECT * FROM pg_temp.letters;
TRUNCATE iotpipe.dead_letters;

-- 5. a trigger that raises for some rows refuses them; a trigger that fails
--    whatever the row fails the call, and nothing of it is written
CREATE FUNCTION public.no_negative() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.temperature < 0 THEN
    RAISE EXCEPTION 'negative temperature % from %', NEW.temperature, NEW.sensor_id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER no_negative BEFORE INSERT ON iotpipe.readings
  FOR EACH ROW EXECUTE FUNCTION public.no_negative();
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-g","ts":"2026-11-28T14:00:00Z","temperature":-5}',
  '{"sensor_id":"dba-g","ts":"2026-11-28T14:00:01Z","temperature":5}']);
DROP TRIGGER no_negative ON iotpipe.readings;
CREATE FUNCTION public.broken() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM * FROM public.no_such_table;
  RETURN NEW;
END $$;
CREATE TRIGGER broken BEFORE INSERT ON iotpipe.readings
  FOR EACH ROW EXECUTE FUNCTION public.broken();
\set VERBOSITY terse
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-h","ts":"2026-11-28T14:00:00Z","temperature":1}']);
\set VERBOSITY default
DROP TRIGGER broken ON iotpipe.readings;
DROP FUNCTION public.broken(), public.no_negative();
SELECT sensor_id, ts, temperature FROM iotpipe.readings WHERE sensor_id IN ('dba-g', 'dba-h') ORDER BY ts;
SELECT * FROM pg_temp.letters;
SELECT * FROM pg_temp.drift;
TRUNCATE iotpipe.dead_letters;

-- 6. case 16: ingest_json in a savepoint that rolls back, and in an
--    exception block whose call fails after its readings were written (a
--    constraint on dead_letters): the sensors' counters roll back with the
--    readings
BEGIN;
SAVEPOINT before;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-a","ts":"2026-11-28T15:00:00Z","temperature":1}',
  '{"sensor_id":"dba-z","ts":"2026-11-28T15:00:00Z","temperature":1}']);
ROLLBACK TO SAVEPOINT before;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-a","ts":"2026-11-28T15:00:01Z","temperature":1}']);
COMMIT;
ALTER TABLE iotpipe.dead_letters ADD CONSTRAINT no_nulls CHECK (error <> 'message is NULL');
DO $$
BEGIN
  PERFORM iotpipe.ingest_json(ARRAY['{"sensor_id":"dba-a","ts":"2026-11-28T15:00:02Z","temperature":1}', NULL]);
EXCEPTION WHEN check_violation THEN
  RAISE NOTICE 'the call failed: %', SQLERRM;
END $$;
ALTER TABLE iotpipe.dead_letters DROP CONSTRAINT no_nulls;
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"dba-a","ts":"2026-11-28T15:00:03Z","temperature":1}']);
SELECT sensor_id, readings_total FROM iotpipe.sensors WHERE sensor_id IN ('dba-a', 'dba-z') ORDER BY 1;
SELECT count(*) FROM iotpipe.readings WHERE sensor_id = 'dba-a';
SELECT * FROM pg_temp.drift;

TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters;
