-- The ingest core through iotpipe.ingest_json(): accepted readings are stored
-- exactly; every rejection reason of the contract yields one dead letter
-- whose payload is byte-for-byte the input.
SET timezone = 'UTC';
TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters;

-- accepted: zones, fractions, epoch milliseconds, optional fields
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"t-1","ts":"2026-11-27T10:15:30.123Z","temperature":23.4,"humidity":41.0,"location":"plant-a/line-1"}',
  '{"sensor_id":"t-1","ts":"2026-11-27T12:15:30.5+02:00","temperature":-40}',
  '{"sensor_id":"t-1","ts":"2026-11-27 05:00:00-05:30","humidity":0}',
  '{"sensor_id":"t-2","ts":1795774530123,"humidity":100,"extra":{"nested":[1,2,{"a":null}]}}',
  '{"ts":"2026-11-27T10:00:00.123456Z","sensor_id":"t-2","temperature":140.5,"location":null}',
  ' {"sensor_id":"t-3","ts":"2026-11-27t10:00:00z","temperature":1e2} ',
  '{"sensor_id":"\u00e9t\u00e9-\ud83d\ude00","ts":"2026-11-27T10:00:00Z","temperature":-273.15}',
  '{"sensor_id":"t-4","ts":"2026-11-27T10:00:00Z","temperature":21.5,"temperature":22.5}'
]);
SELECT sensor_id, ts, temperature, humidity, location
  FROM iotpipe.readings ORDER BY sensor_id, ts;
SELECT sensor_id, location, first_seen, last_seen, last_temperature, last_humidity, readings_total
  FROM iotpipe.sensors ORDER BY sensor_id;
-- epoch milliseconds are exact
SELECT ts = to_timestamp(1795774530.123) AS epoch_ms_exact FROM iotpipe.readings WHERE sensor_id = 't-2' AND humidity = 100;

-- rejected: one case per reason
CREATE TEMP TABLE bad(n int, msg text, reason text);
INSERT INTO bad VALUES
 (1,  'not json at all', 'invalid JSON: unexpected character ''n'' at byte 0'),
 (2,  '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1', 'invalid JSON: unexpected end of input'),
 (3,  '[1,2,3]', 'not a JSON object'),
 (4,  '"just a string"', 'not a JSON object'),
 (5,  '', 'empty message'),
 (6,  '{"ts":"2026-11-27T10:00:00Z","temperature":1}', 'missing sensor_id'),
 (7,  '{"sensor_id":42,"ts":"2026-11-27T10:00:00Z","temperature":1}', 'sensor_id must be a string'),
 (8,  '{"sensor_id":"","ts":"2026-11-27T10:00:00Z","temperature":1}', 'sensor_id must be 1 to 64 characters'),
 (9,  '{"sensor_id":"' || repeat('x', 65) || '","ts":"2026-11-27T10:00:00Z","temperature":1}', 'sensor_id must be 1 to 64 characters'),
 (10, '{"sensor_id":"x","temperature":1}', 'missing ts'),
 (11, '{"sensor_id":"x","ts":true,"temperature":1}', 'ts must be an ISO-8601 string or integer epoch milliseconds'),
 (12, '{"sensor_id":"x","ts":"yesterday","temperature":1}', 'ts is not an ISO-8601 timestamp with a time zone'),
 (13, '{"sensor_id":"x","ts":"2026-11-27T10:00:00","temperature":1}', 'ts has no time zone'),
 (14, '{"sensor_id":"x","ts":"2026-02-30T10:00:00Z","temperature":1}', 'ts is not a valid date and time'),
 (15, '{"sensor_id":"x","ts":"1999-12-31T23:59:59Z","temperature":1}', 'ts is before 2000-01-01'),
 (16, '{"sensor_id":"x","ts":"2999-01-01T00:00:00Z","temperature":1}', 'ts is more than a day in the future'),
 (17, '{"sensor_id":"x","ts":1700000000000.5,"temperature":1}', 'ts must be integer epoch milliseconds or an ISO-8601 string'),
 (18, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z"}', 'no temperature or humidity'),
 (19, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":"23.4"}', 'temperature must be a number'),
 (20, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","humidity":[50]}', 'humidity must be a number'),
 (21, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":NaN}', 'invalid JSON: unexpected character ''N'' at byte 59'),
 (22, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":Infinity}', 'invalid JSON: unexpected character ''I'' at byte 59'),
 (23, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1e999}', 'temperature is not a finite number'),
 (24, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","humidity":100.01}', 'humidity outside 0-100'),
 (25, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","humidity":-0.5}', 'humidity outside 0-100'),
 (26, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":-273.16}', 'temperature below absolute zero'),
 (27, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1,"location":7}', 'location must be a string'),
 (28, '{"sensor_id":"a\u0000b","ts":"2026-11-27T10:00:00Z","temperature":1}', 'sensor_id contains a NUL character'),
 (29, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1}}', 'invalid JSON: unexpected data after the object at byte 61'),
 (30, '{"sensor_id":"x","ts":"2026-11-27T10:00:00+16:00","temperature":1}', 'ts has an invalid time zone offset'),
 (31, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1,"x":' || repeat('[', 70) || repeat(']', 70) || '}', 'invalid JSON: nesting deeper than 64 levels'),
 (32, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1,"pad":"' || repeat('y', 70000) || '"}', 'message too large: 70070 bytes (limit 65536)'),
 (33, '{"sensor_id":"\ud800","ts":"2026-11-27T10:00:00Z","temperature":1}', 'invalid JSON: lone surrogate in \u escape'),
 (34, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":01}', 'invalid JSON: unexpected character ''1'' at byte 60'),
 (35, '{"sensor_id":"x","ts":"2026-11-27T10:00:00Z","temperature":1,}', 'invalid JSON: unexpected character ''}'' at byte 61');

SELECT * FROM iotpipe.ingest_json(ARRAY(SELECT msg FROM bad ORDER BY n));

-- one dead letter per case, in order, with the exact bytes and the reason
SELECT b.n, d.error = b.reason AS reason_ok, d.payload = convert_to(b.msg, 'UTF8') AS bytes_ok,
       d.source, CASE WHEN d.error = b.reason THEN '' ELSE d.error END AS got
  FROM bad b
  JOIN (SELECT row_number() OVER (ORDER BY id) AS n, * FROM iotpipe.dead_letters) d USING (n)
 ORDER BY b.n;
SELECT count(*) AS dead_letters FROM iotpipe.dead_letters;

-- raw bytes that are not valid text: invalid UTF-8 and a raw NUL byte
SELECT * FROM iotpipe.ingest_json_bytes(ARRAY[
  '\x7b2273656e736f725f6964223a2278ff227d'::bytea,
  '\x7b2273656e736f725f6964223a2278007a227d'::bytea,
  NULL]);
SELECT error, payload FROM iotpipe.dead_letters ORDER BY id DESC LIMIT 3;

-- NULLs and empty arrays
SELECT * FROM iotpipe.ingest_json(NULL);
SELECT * FROM iotpipe.ingest_json('{}');

-- batches larger than iotpipe.batch_size are split, nothing is lost
SET iotpipe.batch_size = 7;
SELECT * FROM iotpipe.ingest_json(ARRAY(
  SELECT format('{"sensor_id":"b-%s","ts":"2026-11-27T11:00:%s.000Z","temperature":%s}', i % 3, lpad((i % 60)::text, 2, '0'), i)
    FROM generate_series(1, 50) i));
RESET iotpipe.batch_size;
SELECT count(*), sum(temperature) FROM iotpipe.readings WHERE sensor_id LIKE 'b-%';
SELECT sensor_id, readings_total FROM iotpipe.sensors WHERE sensor_id LIKE 'b-%' ORDER BY 1;

-- readings go straight into their partitions unless the table has what only
-- COPY handles: a trigger someone added still fires for every reading
-- ingest_json runs with search_path pg_catalog, pg_temp: so does the trigger
CREATE TABLE trig_seen (sensor_id text, ts timestamptz, ingest_xid xid8);
CREATE FUNCTION trig_note() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO public.trig_seen VALUES (NEW.sensor_id, NEW.ts, NEW.ingest_xid); RETURN NEW; END $$;
CREATE TRIGGER note AFTER INSERT ON iotpipe.readings FOR EACH ROW EXECUTE FUNCTION trig_note();
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"trig-1","ts":"2026-11-27T12:00:00Z","temperature":20.5}',
  '{"sensor_id":"trig-2","ts":"2026-11-27T12:00:01Z","humidity":40}']);
SELECT t.sensor_id, t.ts, t.ingest_xid = r.ingest_xid AS same_xid
  FROM trig_seen t JOIN iotpipe.readings r USING (sensor_id, ts) ORDER BY 1;
DROP TRIGGER note ON iotpipe.readings;
DROP TABLE trig_seen;
DROP FUNCTION trig_note();

-- and a CHECK constraint someone added is enforced on the direct path: the
-- row becomes a dead letter naming it (more in 17_dba_constraints)
ALTER TABLE iotpipe.readings ADD CONSTRAINT plausible CHECK (temperature < 1000);
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"chk-1","ts":"2026-11-27T12:00:00Z","temperature":2000}']);
SELECT count(*) AS kept FROM iotpipe.readings WHERE sensor_id = 'chk-1';
SELECT error FROM iotpipe.dead_letters WHERE position('"chk-1"'::bytea IN payload) > 0;
ALTER TABLE iotpipe.readings DROP CONSTRAINT plausible;
-- values from the direct path read back exactly, long texts too
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"exact-é","ts":"2026-11-27T12:00:00.123456Z","temperature":-0.1,"humidity":99.99,"location":"a/b"}',
  format('{"sensor_id":"%s","ts":"2026-11-27T12:00:00Z","temperature":1e-300,"location":"%s"}',
         repeat('é', 64), repeat('x', 200))]);
SELECT sensor_id, ts, temperature, humidity, location, ingest_xid IS NOT NULL AS has_xid,
       ingested_at <= clock_timestamp() AS ingested_before_now
  FROM iotpipe.readings WHERE sensor_id = 'exact-é';
SELECT sensor_id = repeat('é', 64) AS long_id, location = repeat('x', 200) AS long_location,
       temperature = 1e-300 AS tiny
  FROM iotpipe.readings WHERE sensor_id LIKE 'éé%';
