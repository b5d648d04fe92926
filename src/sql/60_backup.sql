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
    PRIMARY KEY (pid, backend_start)
);
COMMENT ON TABLE iotpipe.restore_sessions IS
    'sessions that created the extension as a restore does; the launcher waits until they end';
INSERT INTO iotpipe.restore_sessions (pid, backend_start)
SELECT a.pid, a.backend_start FROM pg_catalog.pg_stat_activity a
 WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
   AND pg_catalog.current_setting('row_security') OPERATOR(pg_catalog.=) 'off';

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
