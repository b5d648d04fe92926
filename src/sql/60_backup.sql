-- iotpipe install script, part 60: pg_dump / pg_restore (README.md, "Backup
-- and restore").
--
-- pg_dump leaves out the objects of an extension (CREATE EXTENSION in the
-- restore makes them again) and dumps only the rows of the tables and the
-- values of the sequences marked here.  The partitions of iotpipe.readings
-- are not members of the extension: pg_dump dumps them, their indexes and
-- their rows like any table (which is why iotpipe.readings has no
-- partitioned index, see src/partition.c).

------------------------------------------------------------------------------
-- Restores in progress: the launcher waits for them
------------------------------------------------------------------------------
-- pg_dump's scripts begin with SET row_security = off, which an interactive
-- session hardly ever does: CREATE EXTENSION in such a session is taken for
-- the start of a restore and the session noted here.  While it is connected
-- (or any session of this database has application_name pg_restore, as
-- pg_restore's parallel workers do), the launcher makes no partition and
-- starts no worker here: the restore creates the dumped partitions without a
-- collision, and the restored sources and simulator start once their rows,
-- offsets and positions are all in.  Not dumped: each database notes its own.
CREATE TABLE iotpipe.restore_sessions (
    pid           int NOT NULL,
    backend_start timestamptz NOT NULL,
    noted_at      timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,              -- iotpipe._restore_finish() ran
    PRIMARY KEY (pid, backend_start)
);
COMMENT ON TABLE iotpipe.restore_sessions IS
    'sessions that created the extension as a restore does; the launcher waits until they end';
INSERT INTO iotpipe.restore_sessions (pid, backend_start)
SELECT a.pid, a.backend_start FROM pg_catalog.pg_stat_activity a
 WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
   AND pg_catalog.current_setting('row_security') OPERATOR(pg_catalog.=) 'off';

-- The pid of a restore session still connected to this database, or NULL.
CREATE FUNCTION iotpipe._restore_running() RETURNS int LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp AS
$$
    SELECT a.pid FROM pg_catalog.pg_stat_activity a
     WHERE a.datid OPERATOR(pg_catalog.=)
           (SELECT d.oid FROM pg_catalog.pg_database d
             WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
       AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
       AND (a.application_name OPERATOR(pg_catalog.=) 'pg_restore'
            OR EXISTS (SELECT FROM iotpipe.restore_sessions r
                        WHERE r.pid OPERATOR(pg_catalog.=) a.pid
                          AND r.backend_start OPERATOR(pg_catalog.=) a.backend_start))
     ORDER BY a.pid LIMIT 1
$$;

-- After a restore, before anything is ingested here: the ETL's watermark
-- (etl_runs.snapshot against readings.ingest_xid) counts transactions of the
-- server the dump came from.  On another server those numbers mean nothing
-- (its counter may be far behind, so that no later reading would ever look
-- new).  So: the restored readings that the source's ETL had not taken in
-- yet are held in iotpipe.etl_pending for the next run; restored readings
-- whose ingest_xid this server has not reached are set to 3 (a transaction
-- long past, "processed"); a run row with this server's snapshot becomes the
-- watermark.  On the same server nothing needs to change but the pending
-- rows and the new watermark, which are exact there too.  Run once, by the
-- launcher before it starts any worker, by run_etl() and by the first SQL
-- entry point of each session; true when done (also when there was nothing
-- to do), false while a restore still runs.
CREATE FUNCTION iotpipe._restore_finish() RETURNS bool LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    last_snap pg_snapshot;
    cur       pg_snapshot;
BEGIN
    IF NOT EXISTS (SELECT FROM iotpipe.restore_sessions r WHERE r.finished_at IS NULL) THEN
        RETURN true;
    END IF;
    IF iotpipe._restore_running() IS NOT NULL THEN
        RETURN false;
    END IF;
    -- one at a time, with the ETL; no ingest meanwhile
    PERFORM iotpipe._etl_lock();  -- run_etl's
    LOCK TABLE iotpipe.readings IN SHARE MODE;
    IF NOT EXISTS (SELECT FROM iotpipe.restore_sessions r WHERE r.finished_at IS NULL) THEN
        RETURN true;
    END IF;
    SELECT r.snapshot INTO last_snap FROM iotpipe.etl_runs r
     WHERE r.status = 'ok' ORDER BY r.run_id DESC LIMIT 1;
    cur := pg_current_snapshot();
    IF last_snap IS NOT NULL THEN
        INSERT INTO iotpipe.etl_pending
        SELECT r.sensor_id, r.ts, r.temperature, r.humidity, r.location, r.ingest_xid, r.ctid
          FROM iotpipe.readings r
         WHERE NOT pg_visible_in_snapshot(r.ingest_xid, last_snap);
    END IF;
    UPDATE iotpipe.readings r SET ingest_xid = '3'
     WHERE NOT pg_visible_in_snapshot(r.ingest_xid, cur);
    IF last_snap IS NOT NULL THEN
        INSERT INTO iotpipe.etl_runs (status, snapshot, watermark, finished_at, duration, error)
        VALUES ('ok', cur, pg_snapshot_xmin(cur), clock_timestamp(), interval '0',
                'not a run: the watermark after a restore');
    END IF;
    UPDATE iotpipe.restore_sessions r SET finished_at = now() WHERE r.finished_at IS NULL;
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION iotpipe._restore_running(), iotpipe._restore_finish() FROM PUBLIC;
-- the SQL entry points (admin functions) call it as their caller
GRANT EXECUTE ON FUNCTION iotpipe._restore_finish() TO iotpipe_admin;

------------------------------------------------------------------------------
-- The simulator's one row
------------------------------------------------------------------------------
-- The install script makes the row; a restore then copies the dumped one in:
-- the dumped settings (and position) replace the fresh defaults instead of
-- colliding with them.
CREATE FUNCTION iotpipe._simulator_singleton() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    DELETE FROM iotpipe.simulator s WHERE s.singleton OPERATOR(pg_catalog.=) NEW.singleton;
    RETURN NEW;
END
$$;
CREATE TRIGGER simulator_singleton BEFORE INSERT ON iotpipe.simulator
    FOR EACH ROW EXECUTE FUNCTION iotpipe._simulator_singleton();
REVOKE EXECUTE ON FUNCTION iotpipe._simulator_singleton() FROM PUBLIC;

------------------------------------------------------------------------------
-- What pg_dump keeps (the warehouse and etl_runs/etl_pending: 50_etl.sql)
------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('iotpipe.sensors', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.simulator', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.alert_rules', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.silences', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.kafka_sources', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.kafka_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.kafka_watermarks', '');
-- the sequences behind the ids: new ids continue after the restored ones
SELECT pg_catalog.pg_extension_config_dump('iotpipe.dead_letters_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.alert_rules_rule_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.alerts_alert_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.silences_silence_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.kafka_sources_source_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.etl_runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe_dw.dim_location_location_key_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe_dw.dim_sensor_sensor_key_seq', '');
-- Not dumped: iotpipe_dw.dim_time (the install script makes it whole),
-- iotpipe.etl_stage_* (one run's scratch space), iotpipe.restore_sessions.
