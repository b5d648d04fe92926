-- Daily partitions: readings across a day boundary land in the two UTC days'
-- partitions, created on demand; create_partitions() fills a range.
SET timezone = 'UTC';
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
-- the launcher keeps today and the days ahead created
SELECT count(*) >= 4 AS premade FROM generate_series(0, 3) d
  WHERE to_regclass(format('iotpipe.readings_p%s', to_char(now() AT TIME ZONE 'UTC' + d * interval '1 day', 'YYYYMMDD'))) IS NOT NULL;
-- a bad range is refused
SELECT iotpipe.create_partitions('2021-01-01', '2040-01-01');
