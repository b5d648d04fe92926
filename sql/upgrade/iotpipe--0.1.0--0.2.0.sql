-- iotpipe upgrade 0.1.0 -> 0.2.0.
-- Every change of src/sql/ between the two releases is repeated here, so that
-- ALTER EXTENSION iotpipe UPDATE gives the catalog of a fresh 0.2.0 install
-- (sql/90_upgrade.sql proves it).

\echo Use "ALTER EXTENSION iotpipe UPDATE" to load this file. \quit

-- hardening: workers only in iotpipe.database; the simulator's committed position
-- (issue 11, cases 15 and 18)
ALTER TABLE iotpipe.simulator ADD COLUMN position bigint NOT NULL DEFAULT 0 CHECK (position >= 0);

CREATE FUNCTION iotpipe._require_worker_database() RETURNS void
    AS 'MODULE_PATHNAME', 'iotpipe_require_worker_database_sql' LANGUAGE C
    SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION iotpipe._require_worker_database() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION iotpipe._require_worker_database() TO iotpipe_admin;

CREATE OR REPLACE FUNCTION iotpipe.simulator_start(sensors int DEFAULT 100, rate float8 DEFAULT 100,
                                        seed bigint DEFAULT 1, sink text DEFAULT 'direct',
                                        topic text DEFAULT NULL, brokers text DEFAULT NULL,
                                        malformed_ratio float8 DEFAULT 0.001,
                                        start_ts timestamptz DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM iotpipe._require_worker_database();
    IF sensors IS NULL OR sensors < 1 OR sensors > 1000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid number of sensors: %s', sensors),
            HINT = 'Use between 1 and 1000000 sensors.';
    END IF;
    IF rate IS NULL OR rate < 0 OR rate = 'Infinity' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid simulator rate: %s', rate),
            HINT = 'The rate is readings per second in total; 0 means as fast as possible.';
    END IF;
    IF sink IS NULL OR sink NOT IN ('direct', 'kafka') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid simulator sink: %s', sink),
            HINT = 'Use ''direct'' (straight into the ingest core) or ''kafka''.';
    END IF;
    IF sink = 'kafka' AND (topic IS NULL OR brokers IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the kafka sink needs a topic and brokers',
            HINT = 'Pass topic => ''...'' and brokers => ''host:port''.';
    END IF;
    IF malformed_ratio IS NULL OR malformed_ratio < 0 OR malformed_ratio > 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid malformed_ratio: %s', malformed_ratio),
            HINT = 'Use a share between 0 and 1.';
    END IF;
    UPDATE iotpipe.simulator s
       SET enabled = true, sensors = simulator_start.sensors, rate = simulator_start.rate,
           seed = simulator_start.seed, sink = simulator_start.sink,
           topic = simulator_start.topic, brokers = simulator_start.brokers,
           malformed_ratio = simulator_start.malformed_ratio,
           start_ts = simulator_start.start_ts,
           generation = s.generation + 1, updated_at = now(), position = 0;
    PERFORM iotpipe._wake_launcher();
END
$$;
CREATE OR REPLACE FUNCTION iotpipe.simulator_stop() RETURNS void LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM iotpipe._require_worker_database();
    -- the generation stays: the worker's last batch still commits its position
    UPDATE iotpipe.simulator SET enabled = false, updated_at = now();
    PERFORM iotpipe._wake_launcher();
END
$$;
-- kafka_start and kafka_stop check the database too: see the Kafka block below

-- hardening: Kafka options allowlist, secret files, pinned Kafka functions
-- (kafka_start/kafka_stop/_kafka_check_options pin search_path; the 2-argument
-- _kafka_check_options is replaced by one that also takes secret file names).
DROP FUNCTION iotpipe._kafka_check_options(text[], text[]);

-- Checks librdkafka properties against the allowlist and with librdkafka,
-- without building a client (C, kafka_common.c).  vals[i] is NULL where the
-- value comes from the secret file files[i] (read, checked and dropped).
CREATE FUNCTION iotpipe._kafka_check_options(keys text[], vals text[], files text[]) RETURNS void
    AS 'MODULE_PATHNAME', 'iotpipe_kafka_check_options_files' LANGUAGE C STRICT
    SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION iotpipe.kafka_start(brokers text, topic text, group_id text DEFAULT 'iotpipe',
                                    workers int DEFAULT 1, options jsonb DEFAULT '{}')
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    bad   text;
    keys  text[];
    vals  text[];
    files text[];
BEGIN
    PERFORM iotpipe._require_worker_database();
    IF brokers IS NULL OR pg_catalog.btrim(brokers) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'kafka brokers must not be empty',
            HINT = 'Pass a bootstrap list such as ''host1:9092,host2:9092''.';
    END IF;
    IF topic IS NULL OR topic !~ '^[A-Za-z0-9._-]{1,249}$' OR topic IN ('.', '..') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid kafka topic name: %s',
                                        coalesce(pg_catalog.quote_literal(topic), 'NULL')),
            HINT = 'Topic names are 1 to 249 characters from A-Z, a-z, 0-9, ".", "_" and "-".';
    END IF;
    IF group_id IS NULL OR group_id = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'kafka group_id must not be empty';
    END IF;
    IF workers IS NULL OR workers < 1 OR workers > 64 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid number of kafka workers: %s', workers),
            HINT = 'Use between 1 and 64 workers; more workers than partitions stay idle.';
    END IF;
    options := coalesce(options, '{}');
    IF pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'kafka options must be a JSON object',
            HINT = 'Pass librdkafka properties, e.g. ''{"security.protocol": "SASL_SSL"}''.';
    END IF;
    -- never echo option values: they may be secrets.  A value is a scalar or
    -- {"file": name}: a secret the workers read from iotpipe.secrets_dir.
    SELECT pg_catalog.min(e.key) INTO bad FROM pg_catalog.jsonb_each(options) e
     WHERE pg_catalog.jsonb_typeof(e.value) NOT IN ('string', 'number', 'boolean')
       AND NOT (pg_catalog.jsonb_typeof(e.value) = 'object'
                AND (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(e.value)) = 1
                AND pg_catalog.jsonb_typeof(e.value -> 'file'::text) = 'string');
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('kafka option "%s" must be a string, number, boolean or {"file": name}', bad);
    END IF;
    SELECT coalesce(pg_catalog.array_agg(e.key ORDER BY e.key), '{}'),
           coalesce(pg_catalog.array_agg(
               CASE WHEN pg_catalog.jsonb_typeof(e.value) <> 'object'
                    THEN e.value #>> '{}'::text[] END ORDER BY e.key), '{}'),
           coalesce(pg_catalog.array_agg(
               CASE WHEN pg_catalog.jsonb_typeof(e.value) = 'object'
                    THEN e.value ->> 'file'::text END ORDER BY e.key), '{}')
      INTO keys, vals, files
      FROM pg_catalog.jsonb_each(options) e;
    PERFORM iotpipe._kafka_check_options(keys, vals, files);

    INSERT INTO iotpipe.kafka_sources AS s (topic, brokers, group_id, workers, options, enabled)
    VALUES (kafka_start.topic, kafka_start.brokers, kafka_start.group_id, kafka_start.workers,
            kafka_start.options, true)
    ON CONFLICT ON CONSTRAINT kafka_sources_topic_key DO UPDATE
       SET brokers = EXCLUDED.brokers, group_id = EXCLUDED.group_id, workers = EXCLUDED.workers,
           options = EXCLUDED.options, enabled = true, generation = s.generation + 1,
           updated_at = pg_catalog.now();
    PERFORM iotpipe._wake_launcher();
END
$$;
COMMENT ON FUNCTION iotpipe.kafka_start(text, text, text, int, jsonb) IS
    'declare (or update and restart) a Kafka source: its workers consume the topic now and after every server restart, resuming at iotpipe.kafka_offsets';

CREATE OR REPLACE FUNCTION iotpipe.kafka_stop(topic text) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    PERFORM iotpipe._require_worker_database();
    UPDATE iotpipe.kafka_sources s
       SET enabled = false, generation = s.generation + 1, updated_at = pg_catalog.now()
     WHERE s.topic = kafka_stop.topic;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('no kafka source for topic %s',
                                        coalesce(pg_catalog.quote_literal(topic), 'NULL')),
            HINT = 'See iotpipe.kafka_sources for the declared sources.';
    END IF;
    PERFORM iotpipe._wake_launcher();
END
$$;
COMMENT ON FUNCTION iotpipe.kafka_stop(text) IS
    'stop the workers of a Kafka source; its offsets are kept, kafka_start resumes there';

REVOKE EXECUTE ON FUNCTION iotpipe._kafka_check_options(text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION iotpipe._kafka_check_options(text[], text[], text[]) TO iotpipe_admin;
-- end of hardening: Kafka
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
    AS 'MODULE_PATHNAME', 'iotpipe_alert_notify' LANGUAGE C STRICT
    SET search_path = pg_catalog, pg_temp;

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
GRANT EXECUTE ON FUNCTION iotpipe._alert_notify(text) TO iotpipe_admin;

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

-- hardening: iotpipe.notify_ids_only (the payload depends on a setting: STABLE)
ALTER FUNCTION iotpipe._alert_payload(bigint, int, text, text, text, text, text, text, text, text,
                                      float8, float8, float8, timestamptz, timestamptz) STABLE;

-- alert delivery (issue 12): receivers, routes, the outbox iotpipe.notifications,
-- delivery attempts, iotpipe.test_receiver(); the SQL paths that fire and
-- resolve alerts (offline timers, ended silences, disabled rules) write the
-- outbox too
-- Receivers hold secrets (URLs, headers, SMTP credentials): only
-- iotpipe_admin reads the table; iotpipe.receiver_overview shows the rest.
CREATE TABLE iotpipe.receivers (
    name       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('webhook', 'slack', 'email')),
    url        text NOT NULL,
    options    jsonb NOT NULL DEFAULT '{}',
    enabled    bool NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE iotpipe.receivers IS
    'where alert notifications go: webhook, slack or email (url and options are secrets: iotpipe_admin only)';

-- Every insert or update is checked in C before any constraint: the errors
-- name the receiver and the field, never a value, and do not log the
-- statement (which holds the secrets).
CREATE FUNCTION iotpipe._receiver_check() RETURNS trigger
    AS 'MODULE_PATHNAME', 'iotpipe_receiver_check' LANGUAGE C
    SET search_path = pg_catalog, pg_temp;
CREATE TRIGGER receivers_check BEFORE INSERT OR UPDATE ON iotpipe.receivers
    FOR EACH ROW EXECUTE FUNCTION iotpipe._receiver_check();

CREATE TABLE iotpipe.routes (
    route_id     int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    receiver     text NOT NULL REFERENCES iotpipe.receivers (name) ON UPDATE CASCADE ON DELETE CASCADE,
    min_severity text CHECK (min_severity IN ('info', 'warning', 'critical')),
    rule         text,
    location     text,
    sensor_id    text,
    continue     bool NOT NULL DEFAULT false,
    position     int NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routes_position_idx ON iotpipe.routes (position, route_id);
COMMENT ON TABLE iotpipe.routes IS
    'which alerts go to which receiver: NULL matches any; first match by position, then on only while continue';

CREATE TABLE iotpipe.notifications (
    notification_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    -- no foreign key: the history stays when alerts go (and restores without them)
    alert_id        bigint,
    receiver        text NOT NULL,
    event           text NOT NULL CHECK (event IN ('firing', 'resolved')),
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_error      text,
    -- sent as the Idempotency-Key header (HTTP) and in the Message-ID (mail)
    idempotency_key uuid NOT NULL DEFAULT gen_random_uuid(),
    route_id        int,
    payload         json NOT NULL,
    last_attempt_at timestamptz,
    last_status     int          -- HTTP status or SMTP reply code of the last attempt
);
CREATE INDEX notifications_due_idx ON iotpipe.notifications (next_attempt_at, notification_id)
    WHERE state = 'pending';
CREATE INDEX notifications_order_idx ON iotpipe.notifications (alert_id, receiver, notification_id)
    WHERE state = 'pending';
CREATE INDEX notifications_alert_idx ON iotpipe.notifications (alert_id);
CREATE INDEX notifications_failed_idx ON iotpipe.notifications (last_attempt_at)
    WHERE state = 'failed';
-- receiver_overview's counts per receiver and state
CREATE INDEX notifications_receiver_idx ON iotpipe.notifications (receiver, state);
COMMENT ON TABLE iotpipe.notifications IS
    'the delivery outbox: one row per (alert event, receiver), written in the alert''s transaction';

CREATE TABLE iotpipe.notification_attempts (
    notification_id bigint NOT NULL REFERENCES iotpipe.notifications (notification_id) ON DELETE CASCADE,
    attempt         int NOT NULL,
    attempted_at    timestamptz NOT NULL,
    duration_ms     float8,
    status          int,         -- HTTP status or SMTP reply code, NULL when none came
    error           text,        -- NULL when delivered
    PRIMARY KEY (notification_id, attempt)
);
COMMENT ON TABLE iotpipe.notification_attempts IS 'every delivery attempt of a notification';

-- A renamed receiver keeps its outbox: pending and past rows follow the name
-- (routes follow through their foreign key).
CREATE FUNCTION iotpipe._receiver_renamed() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    UPDATE iotpipe.notifications n SET receiver = NEW.name WHERE n.receiver = OLD.name;
    RETURN NULL;
END
$$;
CREATE TRIGGER receivers_renamed AFTER UPDATE OF name ON iotpipe.receivers
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION iotpipe._receiver_renamed();

-- Changes of routes or receivers reach every backend's routing cache at
-- commit (the same counter as alert rules).
CREATE TRIGGER routes_changed AFTER INSERT OR UPDATE OR DELETE ON iotpipe.routes
    FOR EACH ROW EXECUTE FUNCTION iotpipe._alert_rules_changed();
CREATE TRIGGER routes_truncated AFTER TRUNCATE ON iotpipe.routes
    FOR EACH STATEMENT EXECUTE FUNCTION iotpipe._alert_rules_changed();
CREATE TRIGGER receivers_changed AFTER INSERT OR UPDATE OR DELETE ON iotpipe.receivers
    FOR EACH ROW EXECUTE FUNCTION iotpipe._alert_rules_changed();
CREATE TRIGGER receivers_truncated AFTER TRUNCATE ON iotpipe.receivers
    FOR EACH STATEMENT EXECUTE FUNCTION iotpipe._alert_rules_changed();

-- Wake the notifier when the calling transaction commits (C: it sets the
-- notifier's latch; no NOTIFY).
CREATE FUNCTION iotpipe._wake_notifier() RETURNS void
    AS 'MODULE_PATHNAME', 'iotpipe_wake_notifier' LANGUAGE C
    SET search_path = pg_catalog, pg_temp;

-- The alert payload for receivers: the NOTIFY payload, always whole (also
-- with iotpipe.notify_ids_only, which is about LISTEN, not receivers).
CREATE FUNCTION iotpipe._delivery_payload(alert_id bigint, rule_id int, rule text, kind text,
                                          sensor_id text, location text, state text,
                                          severity text, metric text, op text, value float8,
                                          reading float8, threshold float8, ts timestamptz,
                                          started_at timestamptz)
    RETURNS text
    AS 'MODULE_PATHNAME', 'iotpipe_delivery_payload' LANGUAGE C IMMUTABLE
    SET search_path = pg_catalog, pg_temp;

-- The outbox write, set-based: for each alert event (in array order) the
-- routes that match it, ordered by position; a route is taken while every
-- matching route before it has continue.  Routes of disabled receivers are
-- skipped; one row per (event, receiver).  Returns the rows written.
CREATE FUNCTION iotpipe._outbox_enqueue(alert_ids bigint[], events text[], rules text[],
                                        severities text[], locations text[], sensors text[],
                                        payloads text[])
    RETURNS int LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    n int;
BEGIN
    WITH e AS (
        SELECT * FROM ROWS FROM (pg_catalog.unnest(alert_ids), pg_catalog.unnest(events),
                                 pg_catalog.unnest(rules), pg_catalog.unnest(severities),
                                 pg_catalog.unnest(locations), pg_catalog.unnest(sensors),
                                 pg_catalog.unnest(payloads))
               WITH ORDINALITY AS e(alert_id, event, rule, severity, location, sensor_id, payload, ord)
    ), m AS (
        SELECT e.ord, e.alert_id, e.event, e.payload, r.route_id, r.receiver, r.position,
               pg_catalog.bool_and(r.continue) OVER (PARTITION BY e.ord ORDER BY r.position, r.route_id
                                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reached
          FROM e
          JOIN iotpipe.routes r
            ON (r.rule IS NULL OR r.rule = e.rule)
           AND (r.location IS NULL OR r.location = e.location)
           AND (r.sensor_id IS NULL OR r.sensor_id = e.sensor_id)
           AND (r.min_severity IS NULL
                OR CASE e.severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END
                   >= CASE r.min_severity WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END)
          JOIN iotpipe.receivers v ON v.name = r.receiver AND v.enabled
    )
    INSERT INTO iotpipe.notifications (alert_id, receiver, event, route_id, payload)
    SELECT DISTINCT ON (m.ord, m.receiver) m.alert_id, m.receiver, m.event, m.route_id, m.payload::json
      FROM m
     WHERE m.reached IS NULL OR m.reached
     ORDER BY m.ord, m.receiver, m.position, m.route_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM iotpipe._wake_notifier();
    END IF;
    RETURN n;
END
$$;

-- Send a test message to a receiver now, from this session; returns the
-- outcome ('sent: HTTP 200 in 12 ms', 'failed: ...').  Nothing is queued.
CREATE FUNCTION iotpipe.test_receiver(name text) RETURNS text
    AS 'MODULE_PATHNAME', 'iotpipe_test_receiver' LANGUAGE C STRICT
    SET search_path = pg_catalog, pg_temp;

-- Receivers without their secrets, with their outbox counts: for the
-- dashboard and operators.
CREATE VIEW iotpipe.receiver_overview AS
    SELECT r.name, r.kind, r.enabled, r.created_at,
           (SELECT count(*) FROM iotpipe.notifications n
             WHERE n.receiver = r.name AND n.state = 'pending') AS pending,
           (SELECT count(*) FROM iotpipe.notifications n
             WHERE n.receiver = r.name AND n.state = 'sent') AS sent,
           (SELECT count(*) FROM iotpipe.notifications n
             WHERE n.receiver = r.name AND n.state = 'failed') AS failed,
           (SELECT max(n.sent_at) FROM iotpipe.notifications n
             WHERE n.receiver = r.name AND n.state = 'sent') AS last_sent_at,
           (SELECT count(*) FROM iotpipe.routes ro WHERE ro.receiver = r.name) AS routes
      FROM iotpipe.receivers r;
COMMENT ON VIEW iotpipe.receiver_overview IS 'receivers without url or options, with their outbox counts';

------------------------------------------------------------------------------
-- Privileges: admins manage receivers and routes; operators see everything
-- but the secrets; the engine writes the outbox as the role that ingests.
------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON iotpipe.receivers, iotpipe.routes TO iotpipe_admin;
GRANT SELECT ON iotpipe.routes, iotpipe.notifications, iotpipe.notification_attempts,
    iotpipe.receiver_overview TO iotpipe_operator, iotpipe_admin;
GRANT INSERT, UPDATE ON iotpipe.notifications TO iotpipe_admin;
REVOKE EXECUTE ON FUNCTION
    iotpipe._receiver_check(),
    iotpipe._receiver_renamed(),
    iotpipe._wake_notifier(),
    iotpipe._delivery_payload(bigint, int, text, text, text, text, text, text, text, text,
                              float8, float8, float8, timestamptz, timestamptz),
    iotpipe._outbox_enqueue(bigint[], text[], text[], text[], text[], text[], text[]),
    iotpipe.test_receiver(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    iotpipe._wake_notifier(),
    iotpipe._delivery_payload(bigint, int, text, text, text, text, text, text, text, text,
                              float8, float8, float8, timestamptz, timestamptz),
    iotpipe._outbox_enqueue(bigint[], text[], text[], text[], text[], text[], text[]),
    iotpipe.test_receiver(text)
    TO iotpipe_admin;

SELECT pg_catalog.pg_extension_config_dump('iotpipe.receivers', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.routes', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.notifications', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.notification_attempts', '');
-- the sequences behind the ids: new ids continue after the restored ones
SELECT pg_catalog.pg_extension_config_dump('iotpipe.routes_route_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('iotpipe.notifications_notification_id_seq', '');

CREATE OR REPLACE FUNCTION iotpipe._alert_rules_update() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS
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
                -- delivery (issue 12): the outbox, in this transaction
                PERFORM iotpipe._outbox_enqueue(
                    ARRAY[a.alert_id], ARRAY['resolved'], ARRAY[NEW.name], ARRAY[a.severity],
                    ARRAY[a.location], ARRAY[a.sensor_id],
                    ARRAY[iotpipe._delivery_payload(a.alert_id, a.rule_id, NEW.name, NEW.kind,
                                                    a.sensor_id, a.location, 'resolved', a.severity,
                                                    a.metric, NEW.op, NULL, NULL, a.threshold, now(),
                                                    a.started_at)]);
            END IF;
        END LOOP;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION iotpipe._alert_timers(at timestamptz DEFAULT now()) RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS
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
            PERFORM iotpipe._outbox_enqueue(
                ARRAY[a.alert_id], ARRAY['firing'], ARRAY[a.name], ARRAY[a.severity],
                ARRAY[a.location], ARRAY[a.sensor_id],
                ARRAY[iotpipe._delivery_payload(a.alert_id, a.rule_id, a.name, 'offline',
                                                a.sensor_id, a.location, 'firing', a.severity,
                                                NULL, NULL, a.value, NULL, a.threshold, at,
                                                a.started_at)]);
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
        PERFORM iotpipe._outbox_enqueue(
            ARRAY[a.alert_id], ARRAY['firing'], ARRAY[a.name], ARRAY[a.severity],
            ARRAY[a.location], ARRAY[a.sensor_id],
            ARRAY[iotpipe._delivery_payload(a.alert_id, a.rule_id, a.name, a.kind, a.sensor_id,
                                            a.location, 'firing', a.severity, a.metric, a.op,
                                            a.value, a.reading, a.threshold, at, a.started_at)]);
    END LOOP;
    RETURN n;
END
$$;
-- end alert delivery
