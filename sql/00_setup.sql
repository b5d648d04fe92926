-- Set-up for the regression suite: the extension in the preloaded database.
CREATE EXTENSION IF NOT EXISTS iotpipe;
SELECT extname, extversion FROM pg_extension WHERE extname = 'iotpipe';
-- the launcher attaches and makes today's partition (poll with a deadline of 20 s)
DO $$
BEGIN
  FOR i IN 1..200 LOOP
    EXIT WHEN EXISTS (SELECT FROM iotpipe.status WHERE kind = 'launcher' AND state = 'running')
         AND to_regclass(format('iotpipe.readings_p%s', to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD'))) IS NOT NULL;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
SELECT worker, kind, state FROM iotpipe.status WHERE kind = 'launcher';
SHOW iotpipe.database;
