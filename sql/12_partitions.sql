-- Partitions of iotpipe.readings: one per UTC day for recent data (made ahead
-- by the launcher, or by create_partitions()); for old data, made on demand,
-- the coarsest range that overlaps no partition and ends before the daily
-- window: the year if it has no partition, else the month, else the day.
SET timezone = 'UTC';
-- daily partitions made explicitly: readings across a day boundary land in
-- the two UTC days' partitions
SELECT iotpipe.create_partitions('2021-03-04', '2021-03-05');
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"p-1","ts":"2021-03-04T23:59:59.999Z","temperature":1}',
  '{"sensor_id":"p-1","ts":"2021-03-05T00:00:00Z","temperature":2}',
  '{"sensor_id":"p-1","ts":"2021-03-05T01:30:00+02:00","temperature":3}'
]);
SELECT tableoid::regclass AS partition, ts, temperature
  FROM iotpipe.readings WHERE sensor_id = 'p-1' ORDER BY ts;
SELECT pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_class c WHERE c.oid IN ('iotpipe.readings_p20210304'::regclass, 'iotpipe.readings_p20210305'::regclass)
 ORDER BY 1;
-- ranges, idempotent
SELECT iotpipe.create_partitions('2021-02-27', '2021-03-02');
SELECT iotpipe.create_partitions('2021-02-27', '2021-03-05');
SELECT count(*) FROM pg_inherits WHERE inhparent = 'iotpipe.readings'::regclass
   AND inhrelid::regclass::text BETWEEN 'iotpipe.readings_p20210227' AND 'iotpipe.readings_p20210305';

-- old data on demand: a year (2003 has no partition), a month (2021 has
-- days, May has none), a day (March 2021 has days)
SELECT * FROM iotpipe.ingest_json(ARRAY[
  '{"sensor_id":"p-2","ts":"2003-04-05T06:00:00Z","temperature":1}',
  '{"sensor_id":"p-2","ts":"2003-11-30T23:00:00Z","temperature":2}',
  '{"sensor_id":"p-2","ts":"2021-05-17T12:00:00Z","temperature":3}',
  '{"sensor_id":"p-2","ts":"2021-03-20T12:00:00Z","temperature":4}'
]);
SELECT tableoid::regclass AS partition, ts, temperature
  FROM iotpipe.readings WHERE sensor_id = 'p-2' ORDER BY ts;
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_class c WHERE c.relname IN ('readings_p2003', 'readings_p202105', 'readings_p20210320')
 ORDER BY 1;
-- made the way ATTACH PARTITION makes them: the parent's indexes, owner,
-- NOT NULL and defaults
SELECT c.relname, pg_get_userbyid(c.relowner) = pg_get_userbyid(p.relowner) AS same_owner,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes,
       (SELECT string_agg(a.attname || ':' || a.attnotnull || ':' || (d.adbin IS NOT NULL), ',' ORDER BY a.attnum)
          FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0) AS columns
  FROM pg_class c, pg_class p
 WHERE c.relname = 'readings_p2003' AND p.oid = 'iotpipe.readings'::regclass;

-- one message per day for 3,000 days since 2000, in one call: one partition
-- per year (2003 exists), not 3,000 (0.1.0: out of shared memory)
SELECT * FROM iotpipe.ingest_json(ARRAY(
  SELECT format('{"sensor_id":"p-3","ts":"%s","temperature":1}',
                to_char(timestamp '2000-01-01 12:00' + i * interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
    FROM generate_series(0, 2999) i));
SELECT count(*) AS readings, count(DISTINCT tableoid) AS partitions,
       min(tableoid::regclass::text) AS first, max(tableoid::regclass::text) AS last
  FROM iotpipe.readings WHERE sensor_id = 'p-3';
-- plans still prune to the partitions of the range
SET enable_indexscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM iotpipe.readings
 WHERE ts >= '2005-06-01 00:00+00' AND ts < '2005-07-01 00:00+00';
RESET enable_indexscan;
RESET enable_bitmapscan;
-- create_partitions() skips days a coarser partition covers
SELECT iotpipe.create_partitions('2005-06-01', '2005-06-03');

-- the launcher keeps today and the days ahead created
SELECT count(*) >= 4 AS premade FROM generate_series(0, 3) d
  WHERE to_regclass(format('iotpipe.readings_p%s', to_char(now() AT TIME ZONE 'UTC' + d * interval '1 day', 'YYYYMMDD'))) IS NOT NULL;
-- a bad range is refused
SELECT iotpipe.create_partitions('2021-01-01', '2040-01-01');

-- leave the later tests the table they expect
DELETE FROM iotpipe.readings WHERE sensor_id IN ('p-2', 'p-3');
DELETE FROM iotpipe.sensors WHERE sensor_id IN ('p-2', 'p-3');
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'iotpipe.readings'::regclass
                AND c.relname ~ '^readings_p(\d{4}|\d{6}|20210320)$'
    LOOP
        EXECUTE format('DROP TABLE %s', r.rel);
    END LOOP;
END
$$;
