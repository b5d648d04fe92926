-- iotpipe upgrade 0.1.0 -> 0.2.0.
-- Every change of src/sql/ between the two releases is repeated here, so that
-- ALTER EXTENSION iotpipe UPDATE gives the catalog of a fresh 0.2.0 install
-- (sql/90_upgrade.sql proves it).

\echo Use "ALTER EXTENSION iotpipe UPDATE" to load this file. \quit

-- hardening: input that stalls the pipeline (NOTIFY payload and queue, rule bounds)
-- Rules that the new bounds refuse must be fixed first: say which.
DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('%s (rule_id %s)', left(name, 40), rule_id), ', ' ORDER BY rule_id)
      INTO bad
      FROM iotpipe.alert_rules
     WHERE char_length(name) NOT BETWEEN 1 AND 128 OR for_duration > '366 days'
        OR rate_window > '1 day';
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = 'alert rules outside the 0.2.0 bounds',
            DETAIL = format('These rules have a name longer than 128 characters, a for_duration over 366 days or a rate_window over 1 day: %s.', bad),
            HINT = 'Shorten or change them, then run ALTER EXTENSION iotpipe UPDATE again.';
    END IF;
    IF (SELECT count(*) FROM iotpipe.alert_rules WHERE enabled) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'program_limit_exceeded',
            MESSAGE = 'too many enabled alert rules for 0.2.0',
            DETAIL = 'At most 10000 alert rules can be enabled at a time.',
            HINT = 'Disable rules, then run ALTER EXTENSION iotpipe UPDATE again.';
    END IF;
END
$$;
ALTER TABLE iotpipe.alert_rules
    ADD CONSTRAINT alert_rules_name_length_check CHECK (char_length(name) BETWEEN 1 AND 128),
    ADD CONSTRAINT alert_rules_for_duration_max_check CHECK (for_duration <= '366 days'),
    ADD CONSTRAINT alert_rules_rate_window_max_check CHECK (rate_window <= '1 day');

CREATE FUNCTION iotpipe._alert_rules_limit() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('iotpipe.alert_rules_limit'));
    SELECT count(*) INTO n FROM iotpipe.alert_rules WHERE enabled;
    IF n > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'program_limit_exceeded',
            MESSAGE = format('too many enabled alert rules: %s', n),
            DETAIL = 'At most 10000 alert rules can be enabled at a time.',
            HINT = 'Disable or delete rules that are no longer needed, or widen the scope of a rule instead of repeating it per sensor.';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER alert_rules_limit AFTER INSERT OR UPDATE OF enabled ON iotpipe.alert_rules
    FOR EACH STATEMENT EXECUTE FUNCTION iotpipe._alert_rules_limit();

CREATE FUNCTION iotpipe._alert_notify(payload text) RETURNS bool
    AS 'MODULE_PATHNAME', 'iotpipe_alert_notify' LANGUAGE C STRICT;

CREATE OR REPLACE FUNCTION iotpipe._alert_rules_update() RETURNS trigger LANGUAGE plpgsql AS
$$
DECLARE
    a record;
BEGIN
    NEW.updated_at := now();
    IF OLD.enabled AND NOT NEW.enabled THEN
        FOR a IN
            UPDATE iotpipe.alerts al
               SET state = 'resolved', resolved_at = now(), resolved_wall = now()
             WHERE al.rule_id = NEW.rule_id AND al.state = 'firing'
         RETURNING al.*
        LOOP
            IF NOT iotpipe._silenced(a.rule_id, a.sensor_id, a.location) THEN
                PERFORM iotpipe._alert_notify(
                    iotpipe._alert_payload(a.alert_id, a.rule_id, NEW.name, NEW.kind, a.sensor_id,
                                           a.location, 'resolved', a.severity, a.metric, NEW.op,
                                           NULL, NULL, a.threshold, now(), a.started_at));
            END IF;
        END LOOP;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION iotpipe._alert_timers(at timestamptz DEFAULT now()) RETURNS int
    LANGUAGE plpgsql AS
$$
DECLARE
    a record;
    n int := 0;
BEGIN
    -- offline: sensors in scope of an enabled offline rule that sent nothing
    -- (by ingest wall-clock time) for the rule's for_duration.  Sensor rows
    -- locked by a running ingest transaction are reporting right now: skip.
    FOR a IN
        WITH silent AS (
            SELECT r.rule_id, r.name, r.severity, r.op, s.sensor_id, s.location,
                   extract(epoch FROM at - s.last_ingested_at)::float8 AS secs,
                   extract(epoch FROM r.for_duration)::float8 AS limit_secs
              FROM iotpipe.alert_rules r
              JOIN iotpipe.sensors s
                ON (r.sensor_id IS NULL OR s.sensor_id = r.sensor_id)
               AND (r.location IS NULL OR s.location = r.location)
             WHERE r.enabled AND r.kind = 'offline'
               AND s.last_ingested_at < at - r.for_duration
               AND NOT EXISTS (SELECT FROM iotpipe.alerts x
                                WHERE x.rule_id = r.rule_id AND x.sensor_id = s.sensor_id
                                  AND x.state = 'firing')
               FOR UPDATE OF s SKIP LOCKED
        ), ins AS (
            INSERT INTO iotpipe.alerts AS al
                   (rule_id, sensor_id, severity, state, value, started_at, location,
                    threshold, silenced)
            SELECT rule_id, sensor_id, severity, 'firing', secs, at, location, limit_secs,
                   iotpipe._silenced(rule_id, sensor_id, location, at)
              FROM silent
            ON CONFLICT (rule_id, sensor_id) WHERE state = 'firing' DO NOTHING
            RETURNING al.*
        )
        SELECT ins.*, silent.name FROM ins JOIN silent USING (rule_id, sensor_id)
         ORDER BY ins.alert_id
    LOOP
        n := n + 1;
        IF NOT a.silenced THEN
            PERFORM iotpipe._alert_notify(
                iotpipe._alert_payload(a.alert_id, a.rule_id, a.name, 'offline', a.sensor_id,
                                       a.location, 'firing', a.severity, NULL, NULL, a.value,
                                       NULL, a.threshold, at, a.started_at));
        END IF;
    END LOOP;

    -- silences that ended: firing alerts they held back are notified now
    FOR a IN
        UPDATE iotpipe.alerts al SET silenced = false
          FROM iotpipe.alert_rules r
         WHERE al.state = 'firing' AND al.silenced AND r.rule_id = al.rule_id
           AND NOT iotpipe._silenced(al.rule_id, al.sensor_id, al.location, at)
        RETURNING al.*, r.name, r.kind, r.op
    LOOP
        n := n + 1;
        PERFORM iotpipe._alert_notify(
            iotpipe._alert_payload(a.alert_id, a.rule_id, a.name, a.kind, a.sensor_id,
                                   a.location, 'firing', a.severity, a.metric, a.op, a.value,
                                   a.reading, a.threshold, at, a.started_at));
    END LOOP;
    RETURN n;
END
$$;

REVOKE EXECUTE ON FUNCTION iotpipe._alert_notify(text), iotpipe._alert_rules_limit() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION iotpipe._alert_notify(text), iotpipe._alert_rules_limit() TO iotpipe_admin;

-- iotpipe.status gains notifies_skipped (at the end): the function's OUT
-- columns change, so it and the view are made again, with their grants
DROP FUNCTION iotpipe.worker_status() CASCADE;
CREATE FUNCTION iotpipe.worker_status(
    OUT worker text, OUT kind text, OUT pid int, OUT state text, OUT started_at timestamptz,
    OUT messages bigint, OUT rows bigint, OUT rejected bigint, OUT batches bigint,
    OUT rate float8, OUT last_error text, OUT last_error_at timestamptz,
    OUT last_activity timestamptz, OUT restarts int, OUT detail text,
    OUT notifies_skipped bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'iotpipe_worker_status' LANGUAGE C;

CREATE VIEW iotpipe.status AS
    SELECT worker, kind, pid, state, started_at, messages, rows, rejected, batches,
           rate, last_error, last_error_at, last_activity, restarts, detail, notifies_skipped
      FROM iotpipe.worker_status();
COMMENT ON VIEW iotpipe.status IS 'one row per iotpipe worker, from shared memory';
GRANT SELECT ON iotpipe.status TO iotpipe_operator, iotpipe_admin;
GRANT EXECUTE ON FUNCTION iotpipe.worker_status() TO iotpipe_operator, iotpipe_admin;
