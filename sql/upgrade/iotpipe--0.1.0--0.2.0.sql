-- iotpipe upgrade 0.1.0 -> 0.2.0.
-- Every change of src/sql/ between the two releases is repeated here, so that
-- ALTER EXTENSION iotpipe UPDATE gives the catalog of a fresh 0.2.0 install
-- (sql/90_upgrade.sql proves it).

\echo Use "ALTER EXTENSION iotpipe UPDATE" to load this file. \quit

-- hardening: search_path pinned on every non-Kafka function, no EXECUTE for PUBLIC
-- on internal functions, ack_alert acknowledges as the session user (only
-- iotpipe_admin may name another user)
ALTER FUNCTION iotpipe.create_partitions(date, date) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe.ingest_json(text[], text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe.ingest_json_bytes(bytea[], text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe.simulator_start(int, float8, bigint, text, text, text, float8, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe.simulator_stop() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe.simulate(int, bigint, bigint, timestamptz, float8) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._wake_launcher() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe.worker_status() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._alert_rules_changed() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._alerts_changed() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._alert_payload(bigint, int, text, text, text, text, text, text, text, text, float8, float8, float8, timestamptz, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._silenced(int, text, text, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._alert_rules_update() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._alert_timers(timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._etl_date_key(date) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._etl_progress(bigint, text, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._etl_collect(text, bigint, pg_snapshot, pg_snapshot, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION iotpipe._etl_emit(bool) SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION
    iotpipe.worker_status(),
    iotpipe.simulate(int, bigint, bigint, timestamptz, float8),
    iotpipe._alert_rules_changed(),
    iotpipe._alerts_changed(),
    iotpipe._alert_rules_update(),
    iotpipe._etl_date_key(date)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION iotpipe.simulate(int, bigint, bigint, timestamptz, float8) TO iotpipe_admin;
CREATE OR REPLACE FUNCTION iotpipe.ack_alert(alert_id bigint, acked_by text DEFAULT session_user)
    RETURNS iotpipe.alerts
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    a   iotpipe.alerts;
    who text := coalesce(ack_alert.acked_by, session_user::text);
BEGIN
    IF who IS DISTINCT FROM session_user::text
       AND NOT pg_catalog.pg_has_role(session_user, 'iotpipe_admin', 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = 'only iotpipe_admin may acknowledge for another user',
            DETAIL = format('The session user is %I; the acknowledgement named %L.', session_user, who),
            HINT = 'Leave out acked_by to acknowledge as yourself.';
    END IF;
    UPDATE iotpipe.alerts al
       SET acked_at = coalesce(al.acked_at, now()),
           acked_by = CASE WHEN al.acked_at IS NULL THEN who ELSE al.acked_by END
     WHERE al.alert_id = ack_alert.alert_id
    RETURNING al.* INTO a;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('alert %s does not exist', ack_alert.alert_id);
    END IF;
    RETURN a;
END
$$;
COMMENT ON FUNCTION iotpipe.ack_alert(bigint, text) IS
    'acknowledge an alert (firing or resolved) as the session user; naming another user takes iotpipe_admin; the first acknowledgement is kept';
-- end hardening: search_path, PUBLIC EXECUTE, ack_alert
