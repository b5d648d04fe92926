-- The simulator's generator is deterministic for a seed.
SELECT count(*) FROM iotpipe.simulate(10, 1000, 42);
-- the same seed gives the same messages; another seed does not
SELECT (SELECT array_agg(m) FROM iotpipe.simulate(10, 500, 42) m)
     = (SELECT array_agg(m) FROM iotpipe.simulate(10, 500, 42) m) AS same_seed_same_stream;
SELECT (SELECT array_agg(m) FROM iotpipe.simulate(10, 500, 42) m)
     = (SELECT array_agg(m) FROM iotpipe.simulate(10, 500, 43) m) AS other_seed_same_stream;
SELECT m FROM iotpipe.simulate(3, 3, 7, '2026-01-01 00:00:00+00') m;
-- all of it valid when no malformed share is asked for
TRUNCATE iotpipe.dead_letters;
SELECT * FROM iotpipe.ingest_json(ARRAY(SELECT m FROM iotpipe.simulate(50, 5000, 1, '2026-06-01 00:00:00+00') m));
-- a malformed share produces dead letters, roughly that share
SELECT accepted + rejected AS total, rejected BETWEEN 30 AND 80 AS about_five_percent
  FROM iotpipe.ingest_json(ARRAY(SELECT m FROM iotpipe.simulate(50, 1000, 1, '2026-06-02 00:00:00+00', 0.05) m));
-- the signal is plausible: per-location means near their baselines
SELECT location, round(avg(temperature)::numeric, 0) AS avg_t, round(avg(humidity)::numeric, 0) AS avg_h
  FROM iotpipe.readings WHERE ts >= '2026-06-01' AND ts < '2026-06-02'
 GROUP BY location ORDER BY location;
SELECT iotpipe.simulate(0, 1);
