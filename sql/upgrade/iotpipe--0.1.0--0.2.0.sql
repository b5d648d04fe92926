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

-- backup and restore: pg_dump / pg_restore of an iotpipe database (issue 11,
-- case 17; README.md, "Backup and restore").
-- iotpipe.readings loses its partitioned indexes: each partition gets its own
-- (src/partition.c), so that a restore does not build them twice.  Dropping
-- a partitioned index drops its partitions' copies, so each partition's two
-- indexes are built again here (the names are the same).
DROP INDEX iotpipe.readings_sensor_ts_idx;
DROP INDEX iotpipe.readings_ingest_xid_brin;
DO $backup$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'iotpipe.readings'::pg_catalog.regclass ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('CREATE INDEX %I ON iotpipe.%I (sensor_id, ts)',
                                  p.relname || '_sensor_id_ts_idx', p.relname);
        EXECUTE pg_catalog.format('CREATE INDEX %I ON iotpipe.%I USING brin '
                                  '(((ingest_xid::pg_catalog.text)::pg_catalog.int8)) '
                                  'WITH (pages_per_range = 32)',
                                  p.relname || '_ingest_xid_idx', p.relname);
    END LOOP;
END
$backup$;
-- the ETL summarizes the partitions' own BRIN indexes
CREATE OR REPLACE FUNCTION iotpipe._run_etl(run iotpipe.etl_runs) RETURNS iotpipe.etl_runs
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET enable_mergejoin = off
    -- event-time hours and days are UTC: date_trunc() and ::date on
    -- timestamptz follow the time zone, and are cheaper without a zone argument
    SET TimeZone = 'UTC'
    -- JIT compiling these large statements costs seconds and gains nothing
    SET jit = off
AS
$$
DECLARE
    t0        timestamptz := clock_timestamp();
    prev_snap pg_snapshot;
    snap      pg_snapshot := run.snapshot;
    lo        bigint;
    full_load bool;
    n         bigint;
    -- The candidate rows: raw readings of transactions finished at this
    -- run's snapshot ($2) and not at the previous run's ($3), plus what an
    -- earlier run held back, with ts < until ($4).  $1 is the previous
    -- snapshot's xmin: older transactions were all finished then (and the
    -- BRIN index skips their pages).  Every statement below reads exactly
    -- this set, whatever commits meanwhile: a transaction that commits
    -- after the snapshot is not visible in it, and waits for the next run.
    cand      text;
    emitted   record;
    part      record;
BEGIN
    SELECT r.snapshot INTO prev_snap
      FROM iotpipe.etl_runs r
     WHERE r.status = 'ok' AND r.run_id < run.run_id
     ORDER BY r.run_id DESC LIMIT 1;
    cand := 'SELECT r.sensor_id, r.ts, r.temperature, r.humidity, r.location, r.ingest_xid, r.ctid AS ord'
         || ' FROM iotpipe.readings r WHERE pg_visible_in_snapshot(r.ingest_xid, $2)';
    IF prev_snap IS NOT NULL THEN
        lo := pg_snapshot_xmin(prev_snap)::text::bigint;
        cand := cand || ' AND (r.ingest_xid::text)::bigint >= $1'
                     || ' AND NOT pg_visible_in_snapshot(r.ingest_xid, $3)';
    END IF;
    IF run.until IS NOT NULL THEN
        cand := cand || ' AND r.ts < $4';
    END IF;
    cand := cand || ' UNION ALL SELECT p.sensor_id, p.ts, p.temperature, p.humidity, p.location,'
                 || ' p.ingest_xid, p.ord FROM iotpipe.etl_pending p'
                 || ' WHERE $4::timestamptz IS NULL OR p.ts < $4';

    TRUNCATE iotpipe.etl_stage_facts, iotpipe.etl_stage_hourly, iotpipe.etl_stage_days;

    PERFORM iotpipe._etl_progress(run.run_id, 'reading new readings', t0);
    IF to_regclass('pg_temp.etl_summary') IS NOT NULL THEN
        DROP TABLE etl_summary;                 -- a second run in one transaction
    END IF;
    -- every candidate reading, read once into memory (src/etl.c)
    CREATE TEMP TABLE etl_summary ON COMMIT DROP AS
    SELECT * FROM iotpipe._etl_collect(cand, lo, snap, prev_snap, run.until);
    SELECT coalesce(sum(s.n), 0), min(s.min_ts), max(s.max_ts)
      INTO run.rows_read, run.window_start, run.window_end
      FROM etl_summary s;
    ANALYZE etl_summary;

    IF run.until IS NOT NULL THEN
        EXECUTE 'INSERT INTO iotpipe.etl_pending'
             || ' SELECT r.sensor_id, r.ts, r.temperature, r.humidity, r.location, r.ingest_xid, r.ctid'
             || ' FROM iotpipe.readings r WHERE pg_visible_in_snapshot(r.ingest_xid, $2) AND r.ts >= $4'
             || CASE WHEN prev_snap IS NULL THEN ''
                     ELSE ' AND (r.ingest_xid::text)::bigint >= $1'
                          ' AND NOT pg_visible_in_snapshot(r.ingest_xid, $3)' END
          USING lo, snap, prev_snap, run.until;
        SELECT count(*) INTO run.rows_deferred FROM iotpipe.etl_pending p WHERE p.ts >= run.until;
    END IF;

    IF run.rows_read = 0 THEN
        DELETE FROM iotpipe.etl_pending p WHERE run.until IS NULL OR p.ts < run.until;
        RETURN run;
    END IF;

    ---------------------------------------------------------------- dimensions
    PERFORM iotpipe._etl_progress(run.run_id, 'dimensions', t0);
    INSERT INTO iotpipe_dw.dim_location (location, site, area)
    SELECT DISTINCT s.location, split_part(s.location, '/', 1),
           nullif(substr(s.location, length(split_part(s.location, '/', 1)) + 2), '')
      FROM etl_summary s
     WHERE s.location IS NOT NULL
       AND NOT EXISTS (SELECT FROM iotpipe_dw.dim_location l WHERE l.location = s.location)
    ON CONFLICT (location) DO NOTHING;

    INSERT INTO iotpipe_dw.dim_date
    SELECT iotpipe._etl_date_key(d::date), d::date, date_part('year', d), date_part('quarter', d),
           date_part('month', d), to_char(d, 'FMMonth'), date_trunc('month', d)::date,
           date_part('day', d), date_part('week', d), date_part('isodow', d), to_char(d, 'FMDay'),
           date_part('isodow', d) >= 6
      FROM generate_series((run.window_start AT TIME ZONE 'UTC')::date,
                           (run.window_end AT TIME ZONE 'UTC')::date, interval '1 day') d
    ON CONFLICT (date_key) DO NOTHING;

    -- SCD2.  A sensor's version changes when a reading newer than every
    -- reading already loaded for it reports another location; late readings
    -- never split history.  Versions cover event time without gaps.
    CREATE TEMP TABLE etl_sensors ON COMMIT DROP AS
    SELECT s.sensor_id,
           cur.sensor_key, cur.version, cur.location_key AS cur_loc, cur.valid_from,
           count(DISTINCT s.location) AS nloc,
           min(l.location_key) AS one_loc,
           coalesce(bool_or(l.location_key <> cur.location_key), false) AS other_loc
      FROM etl_summary s
      LEFT JOIN iotpipe_dw.dim_sensor cur ON cur.sensor_id = s.sensor_id AND cur.is_current
      LEFT JOIN iotpipe_dw.dim_location l ON l.location = s.location
     GROUP BY s.sensor_id, cur.sensor_key, cur.version, cur.location_key, cur.valid_from;
    -- sensors whose new readings may carry a change, looked at in order:
    -- new sensors with several locations, and known sensors reporting
    -- another location later than every reading loaded for them (their
    -- high-water mark, hwm)
    CREATE TEMP TABLE etl_seq_sensors ON COMMIT DROP AS
    SELECT x.* FROM (
        SELECT se.*,
               CASE WHEN se.sensor_key IS NULL THEN '-infinity'::timestamptz
                    ELSE coalesce(greatest(se.valid_from,
                                           (SELECT max(f.ts) FROM iotpipe_dw.fact_reading f
                                             WHERE f.sensor_key = se.sensor_key)), '-infinity')
               END AS hwm
          FROM etl_sensors se
         WHERE (se.sensor_key IS NULL AND se.nloc > 1) OR se.other_loc) x
     WHERE x.sensor_key IS NULL
        OR EXISTS (SELECT FROM etl_summary s
                     JOIN iotpipe_dw.dim_location l ON l.location = s.location
                    WHERE s.sensor_id = x.sensor_id AND l.location_key <> x.cur_loc
                      AND s.max_ts > x.hwm);
    CREATE TEMP TABLE etl_changes (sensor_id text, ts timestamptz, location_key int) ON COMMIT DROP;
    IF EXISTS (SELECT FROM etl_seq_sensors) THEN
        EXECUTE 'INSERT INTO etl_changes'
             || ' SELECT x.sensor_id, x.ts, x.location_key FROM ('
             || '  SELECT seq.*, lag(seq.location_key) OVER (PARTITION BY seq.sensor_id ORDER BY seq.ts) AS prev'
             || '  FROM (SELECT DISTINCT ON (c.sensor_id, c.ts) c.sensor_id, c.ts, l.location_key, q.cur_loc'
             || '        FROM (' || cand || ') c'
             || '        JOIN etl_seq_sensors q ON q.sensor_id = c.sensor_id'
             || '        JOIN iotpipe_dw.dim_location l ON l.location = c.location'
             || '       WHERE c.ts > q.hwm AND c.sensor_id = ANY ($5)'
             || '       ORDER BY c.sensor_id, c.ts, c.ingest_xid, c.ord) seq) x'
             || ' WHERE x.location_key IS DISTINCT FROM coalesce(x.prev, x.cur_loc)'
          -- the sensors' ids as a list: a few sensors are read through the
          -- (sensor_id, ts) index instead of a scan of every candidate
          USING lo, snap, prev_snap, run.until, (SELECT array_agg(q.sensor_id) FROM etl_seq_sensors q);
    END IF;
    -- new sensors with one location (or none): one version
    INSERT INTO etl_changes
    SELECT se.sensor_id, '-infinity', coalesce(se.one_loc, 0)
      FROM etl_sensors se
     WHERE se.sensor_key IS NULL AND se.nloc <= 1;

    UPDATE iotpipe_dw.dim_sensor d
       SET valid_to = c.first_change, is_current = false
      FROM (SELECT sensor_id, min(ts) AS first_change FROM etl_changes GROUP BY sensor_id) c
     WHERE d.sensor_id = c.sensor_id AND d.is_current;

    INSERT INTO iotpipe_dw.dim_sensor (sensor_id, version, location_key, valid_from, valid_to, is_current)
    SELECT c.sensor_id,
           coalesce((SELECT max(d.version) FROM iotpipe_dw.dim_sensor d WHERE d.sensor_id = c.sensor_id), 0)
             + row_number() OVER w,
           c.location_key,
           CASE WHEN row_number() OVER w = 1
                 AND NOT EXISTS (SELECT FROM iotpipe_dw.dim_sensor d WHERE d.sensor_id = c.sensor_id)
                THEN '-infinity' ELSE c.ts END,
           coalesce(lead(c.ts) OVER w, 'infinity'),
           lead(c.ts) OVER w IS NULL
      FROM etl_changes c
    WINDOW w AS (PARTITION BY c.sensor_id ORDER BY c.ts);
    GET DIAGNOSTICS n = ROW_COUNT;
    run.sensor_versions := n;
    DROP TABLE etl_sensors, etl_seq_sensors, etl_changes;

    ---------------------------------------------------------------- facts
    full_load := NOT EXISTS (SELECT FROM iotpipe_dw.fact_reading);
    IF full_load THEN
        -- an empty warehouse: fresh files, written frozen (as COPY FREEZE;
        -- with wal_level = minimal they skip the WAL); readers of these
        -- empty tables wait for the load
        TRUNCATE iotpipe_dw.fact_reading, iotpipe_dw.fact_sensor_hourly, iotpipe_dw.fact_sensor_daily;
        -- and without their indexes: one sorted build each afterwards costs
        -- less than maintaining them row by row
        ALTER TABLE iotpipe_dw.fact_reading DROP CONSTRAINT fact_reading_pkey;
        ALTER TABLE iotpipe_dw.fact_sensor_hourly DROP CONSTRAINT fact_sensor_hourly_pkey;
        DROP INDEX iotpipe_dw.fact_sensor_hourly_hour_idx;
    END IF;

    PERFORM iotpipe._etl_progress(run.run_id,
        CASE WHEN full_load THEN 'loading facts (full)' ELSE 'loading facts' END, t0);
    -- a full load writes facts and hours straight into the warehouse; an
    -- incremental run recomputes the touched hours and their neighbours,
    -- writes new facts and hours into the warehouse and stages the ones it
    -- changes (another winner, more copies, other flags, other statistics)
    -- and the days whose roll-up they change
    SELECT * INTO emitted FROM iotpipe._etl_emit(full_load);

    IF full_load THEN
        run.rows_written := emitted.facts_new;
        run.hours_refreshed := emitted.hours;
        PERFORM iotpipe._etl_progress(run.run_id, 'indexing facts', t0);
        ALTER TABLE iotpipe_dw.fact_reading ADD CONSTRAINT fact_reading_pkey PRIMARY KEY (sensor_key, ts);
        ALTER TABLE iotpipe_dw.fact_sensor_hourly
            ADD CONSTRAINT fact_sensor_hourly_pkey PRIMARY KEY (sensor_key, hour_start);
        CREATE INDEX fact_sensor_hourly_hour_idx ON iotpipe_dw.fact_sensor_hourly (hour_start);
    ELSE
        PERFORM iotpipe._etl_progress(run.run_id, 'updating facts and hours', t0);
        UPDATE iotpipe_dw.fact_reading f
           SET temperature = s.temperature, humidity = s.humidity, copies = s.copies,
               is_duplicate = s.is_duplicate, is_outlier = s.is_outlier, is_stuck = s.is_stuck,
               ingest_xid = s.ingest_xid
          FROM iotpipe.etl_stage_facts s
         WHERE f.sensor_key = s.sensor_key AND f.ts = s.ts;
        UPDATE iotpipe_dw.fact_sensor_hourly h
           SET readings = s.readings, temperature_n = s.temperature_n,
               temperature_avg = s.temperature_avg, temperature_min = s.temperature_min,
               temperature_max = s.temperature_max, temperature_stddev = s.temperature_stddev,
               humidity_n = s.humidity_n, humidity_avg = s.humidity_avg,
               humidity_min = s.humidity_min, humidity_max = s.humidity_max,
               humidity_stddev = s.humidity_stddev, anomalies = s.anomalies,
               outliers = s.outliers, stuck = s.stuck, duplicates = s.duplicates
          FROM iotpipe.etl_stage_hourly s
         WHERE h.sensor_key = s.sensor_key AND h.hour_start = s.hour_start;
        run.rows_written := emitted.facts_new + emitted.facts_changed;
        run.hours_refreshed := emitted.hours;
        run.days_refreshed := emitted.days;
    END IF;

    ---------------------------------------------------------------- daily roll-up
    PERFORM iotpipe._etl_progress(run.run_id, 'daily roll-up', t0);
    -- from the hourly rows: n, sum and sum of squares add up
    INSERT INTO iotpipe_dw.fact_sensor_daily AS d
    SELECT a.sensor_key, a.date_key, a.location_key, a.readings, a.hours,
           a.t_s / nullif(a.t_n, 0), a.t_min, a.t_max,
           CASE WHEN a.t_n > 1 THEN sqrt(greatest((a.t_q - a.t_s * a.t_s / a.t_n) / (a.t_n - 1), 0)) END,
           a.h_s / nullif(a.h_n, 0), a.h_min, a.h_max,
           CASE WHEN a.h_n > 1 THEN sqrt(greatest((a.h_q - a.h_s * a.h_s / a.h_n) / (a.h_n - 1), 0)) END,
           a.anomalies, a.duplicates
      FROM (SELECT h.sensor_key, h.date_key, min(h.location_key) AS location_key,
                   sum(h.readings) AS readings, count(*) AS hours,
                   sum(h.temperature_n) AS t_n, sum(h.temperature_n * h.temperature_avg) AS t_s,
                   sum((h.temperature_n - 1) * coalesce(h.temperature_stddev ^ 2, 0)
                       + h.temperature_n * h.temperature_avg ^ 2) AS t_q,
                   min(h.temperature_min) AS t_min, max(h.temperature_max) AS t_max,
                   sum(h.humidity_n) AS h_n, sum(h.humidity_n * h.humidity_avg) AS h_s,
                   sum((h.humidity_n - 1) * coalesce(h.humidity_stddev ^ 2, 0)
                       + h.humidity_n * h.humidity_avg ^ 2) AS h_q,
                   min(h.humidity_min) AS h_min, max(h.humidity_max) AS h_max,
                   sum(h.anomalies) AS anomalies, sum(h.duplicates) AS duplicates
              FROM (SELECT h.* FROM iotpipe_dw.fact_sensor_hourly h WHERE full_load
                    UNION ALL
                    -- the days touched, through the primary key
                    SELECT h.* FROM iotpipe.etl_stage_days sd
                      JOIN iotpipe_dw.fact_sensor_hourly h
                        ON h.sensor_key = sd.sensor_key AND h.hour_start >= sd.day_start
                       AND h.hour_start < sd.day_start + interval '1 day'
                     WHERE NOT full_load) h
             GROUP BY h.sensor_key, h.date_key) a
    ON CONFLICT (sensor_key, date_key) DO UPDATE
       SET location_key = excluded.location_key, readings = excluded.readings,
           hours_with_data = excluded.hours_with_data,
           temperature_avg = excluded.temperature_avg, temperature_min = excluded.temperature_min,
           temperature_max = excluded.temperature_max, temperature_stddev = excluded.temperature_stddev,
           humidity_avg = excluded.humidity_avg, humidity_min = excluded.humidity_min,
           humidity_max = excluded.humidity_max, humidity_stddev = excluded.humidity_stddev,
           anomalies = excluded.anomalies, duplicates = excluded.duplicates;
    IF full_load THEN
        GET DIAGNOSTICS n = ROW_COUNT;
        run.days_refreshed := n;
        -- fresh files have no statistics: give the next (incremental) run good plans
        ANALYZE iotpipe_dw.fact_reading, iotpipe_dw.fact_sensor_hourly, iotpipe_dw.fact_sensor_daily;
    END IF;
    DELETE FROM iotpipe.etl_pending p WHERE run.until IS NULL OR p.ts < run.until;

    -- Summarize the BRIN ranges of the partitions this run read, partial
    -- last ranges included (VACUUM leaves those out): the next run then
    -- skips every page read now instead of reading it again.  A partition
    -- busy with VACUUM is left for next time.
    PERFORM iotpipe._etl_progress(run.run_id, 'summarizing BRIN ranges', t0);
    FOR part IN
        SELECT ix.indexrelid::regclass AS idx, ix.indrelid::regclass AS tab
          FROM pg_inherits pi
          JOIN pg_class t ON t.oid = pi.inhrelid
          JOIN pg_index ix ON ix.indrelid = t.oid
          JOIN pg_class i ON i.oid = ix.indexrelid
         WHERE pi.inhparent = 'iotpipe.readings'::regclass
           AND i.relname = t.relname || '_ingest_xid_idx'
           AND t.relname BETWEEN 'readings_p' || to_char(run.window_start, 'YYYYMMDD')
                             AND 'readings_p' || to_char(run.window_end, 'YYYYMMDD')
    LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE NOWAIT', part.tab);
            PERFORM brin_summarize_new_values(part.idx);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    RETURN run;
END
$$;

-- run_etl sets this server's watermark first after a restore
CREATE OR REPLACE FUNCTION iotpipe.run_etl(until timestamptz DEFAULT NULL) RETURNS iotpipe.etl_runs
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    -- the readings are held by src/etl.c, not by executor sorts; work_mem
    -- serves the daily roll-up of a full load (one group per sensor-day)
    SET work_mem = '64MB'
    -- a full load builds the fact indexes once: sort them in memory;
    -- change with ALTER FUNCTION ... SET
    SET maintenance_work_mem = '1GB'
AS
$$
DECLARE
    run  iotpipe.etl_runs;
    res  iotpipe.etl_runs;
    msg  text;
    det  text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_state',
            MESSAGE = 'iotpipe.run_etl() must run at isolation level read committed',
            DETAIL = 'Its snapshot must be taken after it holds the ETL lock, so that it sees the previous run.',
            HINT = 'Call it in its own transaction, or SET TRANSACTION ISOLATION LEVEL READ COMMITTED.';
    END IF;
    -- one run at a time; a second caller waits, then runs on what is new
    PERFORM pg_advisory_xact_lock(7597124726873653297);  -- 'iotpipe.etl'
    -- after a restore: this server's watermark first (60_backup.sql)
    IF NOT iotpipe._restore_finish() THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = 'a restore into this database is running',
            DETAIL = format('Session %s is restoring this database; the warehouse waits for it to end.',
                            iotpipe._restore_running()),
            HINT = 'Run iotpipe.run_etl() when the restore has finished.';
    END IF;
    -- the snapshot is taken by this statement, after the lock: the previous
    -- run has committed and is visible
    INSERT INTO iotpipe.etl_runs (status, until, snapshot, watermark)
    VALUES ('running', until, pg_current_snapshot(), pg_snapshot_xmin(pg_current_snapshot()))
    RETURNING * INTO run;
    BEGIN
        res := iotpipe._run_etl(run);
        res.status := 'ok';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_CONTEXT;
        res := run;
        res.status := 'failed';
        res.error := msg;
        RAISE WARNING 'iotpipe etl run % failed: %', run.run_id, msg
            USING DETAIL = 'Nothing of it was kept; the next run takes the same readings again.';
    END;
    res.finished_at := clock_timestamp();
    res.duration := res.finished_at - res.started_at;
    UPDATE iotpipe.etl_runs r
       SET status = res.status, finished_at = res.finished_at, duration = res.duration,
           window_start = res.window_start, window_end = res.window_end,
           rows_read = res.rows_read, rows_deferred = res.rows_deferred,
           rows_written = res.rows_written, hours_refreshed = res.hours_refreshed,
           days_refreshed = res.days_refreshed, sensor_versions = res.sensor_versions,
           error = res.error
     WHERE r.run_id = run.run_id
    RETURNING * INTO res;
    RAISE NOTICE 'iotpipe etl run %: % in % s, % rows read, % written, % hours refreshed',
        res.run_id, res.status, round(extract(epoch FROM res.duration)::numeric, 3),
        res.rows_read, res.rows_written, res.hours_refreshed;
    RETURN res;
END
$$;

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
-- (ALTER EXTENSION UPDATE is no restore: nothing to note)

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
    PERFORM pg_advisory_xact_lock(7597124726873653297);  -- run_etl's
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
-- end of backup and restore
-- anomaly rules worth their alerts (issue 13): the robust anomaly statistic,
-- the drift kind, alerts that explain themselves.
-- Migration: rules that exist keep the 0.1.0 statistic (statistic 'zscore',
-- same threshold, same meaning); new rules get 'robust' unless they say
-- otherwise.  A NULL threshold of an anomaly or drift rule now means the
-- statistic's default (docs/alerts.md).
ALTER TABLE iotpipe.alert_rules DROP CONSTRAINT alert_rules_kind_check;
ALTER TABLE iotpipe.alert_rules ADD CONSTRAINT alert_rules_kind_check
    CHECK (kind IN ('threshold', 'rate', 'offline', 'anomaly', 'drift'));
ALTER TABLE iotpipe.alert_rules DROP CONSTRAINT alert_rules_anomaly_threshold_check;
ALTER TABLE iotpipe.alert_rules ADD CONSTRAINT alert_rules_anomaly_threshold_check
    CHECK (kind NOT IN ('anomaly', 'drift') OR threshold IS NULL OR threshold > 0);
ALTER TABLE iotpipe.alert_rules DROP CONSTRAINT alert_rules_clear_threshold_check;
ALTER TABLE iotpipe.alert_rules ADD CONSTRAINT alert_rules_clear_threshold_check
    CHECK (clear_threshold IS NULL OR threshold IS NULL
           OR (kind IN ('anomaly', 'drift') AND clear_threshold <= threshold)
           OR (op = '>' AND clear_threshold <= threshold)
           OR (op = '<' AND clear_threshold >= threshold));
ALTER TABLE iotpipe.alert_rules
    ADD COLUMN statistic text NOT NULL DEFAULT 'zscore'
        CONSTRAINT alert_rules_statistic_check CHECK (statistic IN ('zscore', 'robust')),
    ADD COLUMN warmup interval NOT NULL DEFAULT '2 days'
        CONSTRAINT alert_rules_warmup_check CHECK (warmup BETWEEN '0' AND '366 days');
ALTER TABLE iotpipe.alert_rules ALTER COLUMN statistic SET DEFAULT 'robust';
ALTER TABLE iotpipe.alerts
    ADD COLUMN baseline float8,
    ADD COLUMN scale float8,
    ADD COLUMN score float8;
-- end of anomaly rules (issue 13)
-- hardening: exact sensor counters (issue 11, case 16): worker batches record
-- their sensors in iotpipe.sensor_deltas, folded into iotpipe.sensors
-- The sensors of each worker batch, folded into iotpipe.sensors by the
-- worker every iotpipe.sensor_refresh and by the launcher when older
-- (src/sensors.c): one row per batch, arrays by sensor.  Written and
-- deleted with the readings' transactions, so the counts survive crashes
-- and never count a rolled-back reading.
CREATE TABLE iotpipe.sensor_deltas (
    writer         int NOT NULL,                      -- the worker's process id
    made_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    sensor_id      text[] NOT NULL,
    readings       bigint[] NOT NULL,
    first_seen     timestamptz[] NOT NULL,
    last_seen      timestamptz[] NOT NULL,
    location       text[] NOT NULL,
    location_ts    timestamptz[] NOT NULL,
    temperature    float8[] NOT NULL,
    temperature_ts timestamptz[] NOT NULL,
    humidity       float8[] NOT NULL,
    humidity_ts    timestamptz[] NOT NULL
);
-- kept out of line uncompressed: compressing every batch's arrays costs
-- more than writing them
ALTER TABLE iotpipe.sensor_deltas
    ALTER COLUMN sensor_id SET STORAGE EXTERNAL, ALTER COLUMN readings SET STORAGE EXTERNAL,
    ALTER COLUMN first_seen SET STORAGE EXTERNAL, ALTER COLUMN last_seen SET STORAGE EXTERNAL,
    ALTER COLUMN location SET STORAGE EXTERNAL, ALTER COLUMN location_ts SET STORAGE EXTERNAL,
    ALTER COLUMN temperature SET STORAGE EXTERNAL, ALTER COLUMN temperature_ts SET STORAGE EXTERNAL,
    ALTER COLUMN humidity SET STORAGE EXTERNAL, ALTER COLUMN humidity_ts SET STORAGE EXTERNAL;
COMMENT ON TABLE iotpipe.sensor_deltas IS
    'sensors of worker batches not yet folded into iotpipe.sensors (at most iotpipe.sensor_refresh old while a worker streams)';
SELECT pg_catalog.pg_extension_config_dump('iotpipe.sensor_deltas', '');
-- end hardening: exact sensor counters

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

-- hardening: partitions and locks that never stall ingest (issue 11, cases 11,
-- 13b, 13c).  The ETL serializes on the extension's own lock (_etl_lock, which
-- no pg_advisory_* call can take) instead of advisory key 7597124726873653297;
-- old data gets month and year partitions, which retention and the ETL's BRIN
-- summary know; readings held for want of a partition wait in dead_letters.
CREATE INDEX dead_letters_held_idx ON iotpipe.dead_letters (id)
    WHERE pg_catalog.starts_with(error, 'held: ');
COMMENT ON TABLE iotpipe.readings IS 'raw accepted readings, partitioned by ts (UTC days; months or years for old data), append-only';
CREATE FUNCTION iotpipe._etl_lock() RETURNS void
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'iotpipe_etl_lock';
REVOKE EXECUTE ON FUNCTION iotpipe._etl_lock() FROM PUBLIC;
CREATE OR REPLACE FUNCTION iotpipe._run_etl(run iotpipe.etl_runs) RETURNS iotpipe.etl_runs
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET enable_mergejoin = off
    -- event-time hours and days are UTC: date_trunc() and ::date on
    -- timestamptz follow the time zone, and are cheaper without a zone argument
    SET TimeZone = 'UTC'
    -- JIT compiling these large statements costs seconds and gains nothing
    SET jit = off
AS
$$
DECLARE
    t0        timestamptz := clock_timestamp();
    prev_snap pg_snapshot;
    snap      pg_snapshot := run.snapshot;
    lo        bigint;
    full_load bool;
    n         bigint;
    -- The candidate rows: raw readings of transactions finished at this
    -- run's snapshot ($2) and not at the previous run's ($3), plus what an
    -- earlier run held back, with ts < until ($4).  $1 is the previous
    -- snapshot's xmin: older transactions were all finished then (and the
    -- BRIN index skips their pages).  Every statement below reads exactly
    -- this set, whatever commits meanwhile: a transaction that commits
    -- after the snapshot is not visible in it, and waits for the next run.
    cand      text;
    emitted   record;
    part      record;
BEGIN
    SELECT r.snapshot INTO prev_snap
      FROM iotpipe.etl_runs r
     WHERE r.status = 'ok' AND r.run_id < run.run_id
     ORDER BY r.run_id DESC LIMIT 1;
    cand := 'SELECT r.sensor_id, r.ts, r.temperature, r.humidity, r.location, r.ingest_xid, r.ctid AS ord'
         || ' FROM iotpipe.readings r WHERE pg_visible_in_snapshot(r.ingest_xid, $2)';
    IF prev_snap IS NOT NULL THEN
        lo := pg_snapshot_xmin(prev_snap)::text::bigint;
        cand := cand || ' AND (r.ingest_xid::text)::bigint >= $1'
                     || ' AND NOT pg_visible_in_snapshot(r.ingest_xid, $3)';
    END IF;
    IF run.until IS NOT NULL THEN
        cand := cand || ' AND r.ts < $4';
    END IF;
    cand := cand || ' UNION ALL SELECT p.sensor_id, p.ts, p.temperature, p.humidity, p.location,'
                 || ' p.ingest_xid, p.ord FROM iotpipe.etl_pending p'
                 || ' WHERE $4::timestamptz IS NULL OR p.ts < $4';

    TRUNCATE iotpipe.etl_stage_facts, iotpipe.etl_stage_hourly, iotpipe.etl_stage_days;

    PERFORM iotpipe._etl_progress(run.run_id, 'reading new readings', t0);
    IF to_regclass('pg_temp.etl_summary') IS NOT NULL THEN
        DROP TABLE etl_summary;                 -- a second run in one transaction
    END IF;
    -- every candidate reading, read once into memory (src/etl.c)
    CREATE TEMP TABLE etl_summary ON COMMIT DROP AS
    SELECT * FROM iotpipe._etl_collect(cand, lo, snap, prev_snap, run.until);
    SELECT coalesce(sum(s.n), 0), min(s.min_ts), max(s.max_ts)
      INTO run.rows_read, run.window_start, run.window_end
      FROM etl_summary s;
    ANALYZE etl_summary;

    IF run.until IS NOT NULL THEN
        EXECUTE 'INSERT INTO iotpipe.etl_pending'
             || ' SELECT r.sensor_id, r.ts, r.temperature, r.humidity, r.location, r.ingest_xid, r.ctid'
             || ' FROM iotpipe.readings r WHERE pg_visible_in_snapshot(r.ingest_xid, $2) AND r.ts >= $4'
             || CASE WHEN prev_snap IS NULL THEN ''
                     ELSE ' AND (r.ingest_xid::text)::bigint >= $1'
                          ' AND NOT pg_visible_in_snapshot(r.ingest_xid, $3)' END
          USING lo, snap, prev_snap, run.until;
        SELECT count(*) INTO run.rows_deferred FROM iotpipe.etl_pending p WHERE p.ts >= run.until;
    END IF;

    IF run.rows_read = 0 THEN
        DELETE FROM iotpipe.etl_pending p WHERE run.until IS NULL OR p.ts < run.until;
        RETURN run;
    END IF;

    ---------------------------------------------------------------- dimensions
    PERFORM iotpipe._etl_progress(run.run_id, 'dimensions', t0);
    INSERT INTO iotpipe_dw.dim_location (location, site, area)
    SELECT DISTINCT s.location, split_part(s.location, '/', 1),
           nullif(substr(s.location, length(split_part(s.location, '/', 1)) + 2), '')
      FROM etl_summary s
     WHERE s.location IS NOT NULL
       AND NOT EXISTS (SELECT FROM iotpipe_dw.dim_location l WHERE l.location = s.location)
    ON CONFLICT (location) DO NOTHING;

    INSERT INTO iotpipe_dw.dim_date
    SELECT iotpipe._etl_date_key(d::date), d::date, date_part('year', d), date_part('quarter', d),
           date_part('month', d), to_char(d, 'FMMonth'), date_trunc('month', d)::date,
           date_part('day', d), date_part('week', d), date_part('isodow', d), to_char(d, 'FMDay'),
           date_part('isodow', d) >= 6
      FROM generate_series((run.window_start AT TIME ZONE 'UTC')::date,
                           (run.window_end AT TIME ZONE 'UTC')::date, interval '1 day') d
    ON CONFLICT (date_key) DO NOTHING;

    -- SCD2.  A sensor's version changes when a reading newer than every
    -- reading already loaded for it reports another location; late readings
    -- never split history.  Versions cover event time without gaps.
    CREATE TEMP TABLE etl_sensors ON COMMIT DROP AS
    SELECT s.sensor_id,
           cur.sensor_key, cur.version, cur.location_key AS cur_loc, cur.valid_from,
           count(DISTINCT s.location) AS nloc,
           min(l.location_key) AS one_loc,
           coalesce(bool_or(l.location_key <> cur.location_key), false) AS other_loc
      FROM etl_summary s
      LEFT JOIN iotpipe_dw.dim_sensor cur ON cur.sensor_id = s.sensor_id AND cur.is_current
      LEFT JOIN iotpipe_dw.dim_location l ON l.location = s.location
     GROUP BY s.sensor_id, cur.sensor_key, cur.version, cur.location_key, cur.valid_from;
    -- sensors whose new readings may carry a change, looked at in order:
    -- new sensors with several locations, and known sensors reporting
    -- another location later than every reading loaded for them (their
    -- high-water mark, hwm)
    CREATE TEMP TABLE etl_seq_sensors ON COMMIT DROP AS
    SELECT x.* FROM (
        SELECT se.*,
               CASE WHEN se.sensor_key IS NULL THEN '-infinity'::timestamptz
                    ELSE coalesce(greatest(se.valid_from,
                                           (SELECT max(f.ts) FROM iotpipe_dw.fact_reading f
                                             WHERE f.sensor_key = se.sensor_key)), '-infinity')
               END AS hwm
          FROM etl_sensors se
         WHERE (se.sensor_key IS NULL AND se.nloc > 1) OR se.other_loc) x
     WHERE x.sensor_key IS NULL
        OR EXISTS (SELECT FROM etl_summary s
                     JOIN iotpipe_dw.dim_location l ON l.location = s.location
                    WHERE s.sensor_id = x.sensor_id AND l.location_key <> x.cur_loc
                      AND s.max_ts > x.hwm);
    CREATE TEMP TABLE etl_changes (sensor_id text, ts timestamptz, location_key int) ON COMMIT DROP;
    IF EXISTS (SELECT FROM etl_seq_sensors) THEN
        EXECUTE 'INSERT INTO etl_changes'
             || ' SELECT x.sensor_id, x.ts, x.location_key FROM ('
             || '  SELECT seq.*, lag(seq.location_key) OVER (PARTITION BY seq.sensor_id ORDER BY seq.ts) AS prev'
             || '  FROM (SELECT DISTINCT ON (c.sensor_id, c.ts) c.sensor_id, c.ts, l.location_key, q.cur_loc'
             || '        FROM (' || cand || ') c'
             || '        JOIN etl_seq_sensors q ON q.sensor_id = c.sensor_id'
             || '        JOIN iotpipe_dw.dim_location l ON l.location = c.location'
             || '       WHERE c.ts > q.hwm AND c.sensor_id = ANY ($5)'
             || '       ORDER BY c.sensor_id, c.ts, c.ingest_xid, c.ord) seq) x'
             || ' WHERE x.location_key IS DISTINCT FROM coalesce(x.prev, x.cur_loc)'
          -- the sensors' ids as a list: a few sensors are read through the
          -- (sensor_id, ts) index instead of a scan of every candidate
          USING lo, snap, prev_snap, run.until, (SELECT array_agg(q.sensor_id) FROM etl_seq_sensors q);
    END IF;
    -- new sensors with one location (or none): one version
    INSERT INTO etl_changes
    SELECT se.sensor_id, '-infinity', coalesce(se.one_loc, 0)
      FROM etl_sensors se
     WHERE se.sensor_key IS NULL AND se.nloc <= 1;

    UPDATE iotpipe_dw.dim_sensor d
       SET valid_to = c.first_change, is_current = false
      FROM (SELECT sensor_id, min(ts) AS first_change FROM etl_changes GROUP BY sensor_id) c
     WHERE d.sensor_id = c.sensor_id AND d.is_current;

    INSERT INTO iotpipe_dw.dim_sensor (sensor_id, version, location_key, valid_from, valid_to, is_current)
    SELECT c.sensor_id,
           coalesce((SELECT max(d.version) FROM iotpipe_dw.dim_sensor d WHERE d.sensor_id = c.sensor_id), 0)
             + row_number() OVER w,
           c.location_key,
           CASE WHEN row_number() OVER w = 1
                 AND NOT EXISTS (SELECT FROM iotpipe_dw.dim_sensor d WHERE d.sensor_id = c.sensor_id)
                THEN '-infinity' ELSE c.ts END,
           coalesce(lead(c.ts) OVER w, 'infinity'),
           lead(c.ts) OVER w IS NULL
      FROM etl_changes c
    WINDOW w AS (PARTITION BY c.sensor_id ORDER BY c.ts);
    GET DIAGNOSTICS n = ROW_COUNT;
    run.sensor_versions := n;
    DROP TABLE etl_sensors, etl_seq_sensors, etl_changes;

    ---------------------------------------------------------------- facts
    full_load := NOT EXISTS (SELECT FROM iotpipe_dw.fact_reading);
    IF full_load THEN
        -- an empty warehouse: fresh files, written frozen (as COPY FREEZE;
        -- with wal_level = minimal they skip the WAL); readers of these
        -- empty tables wait for the load
        TRUNCATE iotpipe_dw.fact_reading, iotpipe_dw.fact_sensor_hourly, iotpipe_dw.fact_sensor_daily;
        -- and without their indexes: one sorted build each afterwards costs
        -- less than maintaining them row by row
        ALTER TABLE iotpipe_dw.fact_reading DROP CONSTRAINT fact_reading_pkey;
        ALTER TABLE iotpipe_dw.fact_sensor_hourly DROP CONSTRAINT fact_sensor_hourly_pkey;
        DROP INDEX iotpipe_dw.fact_sensor_hourly_hour_idx;
    END IF;

    PERFORM iotpipe._etl_progress(run.run_id,
        CASE WHEN full_load THEN 'loading facts (full)' ELSE 'loading facts' END, t0);
    -- a full load writes facts and hours straight into the warehouse; an
    -- incremental run recomputes the touched hours and their neighbours,
    -- writes new facts and hours into the warehouse and stages the ones it
    -- changes (another winner, more copies, other flags, other statistics)
    -- and the days whose roll-up they change
    SELECT * INTO emitted FROM iotpipe._etl_emit(full_load);

    IF full_load THEN
        run.rows_written := emitted.facts_new;
        run.hours_refreshed := emitted.hours;
        PERFORM iotpipe._etl_progress(run.run_id, 'indexing facts', t0);
        ALTER TABLE iotpipe_dw.fact_reading ADD CONSTRAINT fact_reading_pkey PRIMARY KEY (sensor_key, ts);
        ALTER TABLE iotpipe_dw.fact_sensor_hourly
            ADD CONSTRAINT fact_sensor_hourly_pkey PRIMARY KEY (sensor_key, hour_start);
        CREATE INDEX fact_sensor_hourly_hour_idx ON iotpipe_dw.fact_sensor_hourly (hour_start);
    ELSE
        PERFORM iotpipe._etl_progress(run.run_id, 'updating facts and hours', t0);
        UPDATE iotpipe_dw.fact_reading f
           SET temperature = s.temperature, humidity = s.humidity, copies = s.copies,
               is_duplicate = s.is_duplicate, is_outlier = s.is_outlier, is_stuck = s.is_stuck,
               ingest_xid = s.ingest_xid
          FROM iotpipe.etl_stage_facts s
         WHERE f.sensor_key = s.sensor_key AND f.ts = s.ts;
        UPDATE iotpipe_dw.fact_sensor_hourly h
           SET readings = s.readings, temperature_n = s.temperature_n,
               temperature_avg = s.temperature_avg, temperature_min = s.temperature_min,
               temperature_max = s.temperature_max, temperature_stddev = s.temperature_stddev,
               humidity_n = s.humidity_n, humidity_avg = s.humidity_avg,
               humidity_min = s.humidity_min, humidity_max = s.humidity_max,
               humidity_stddev = s.humidity_stddev, anomalies = s.anomalies,
               outliers = s.outliers, stuck = s.stuck, duplicates = s.duplicates
          FROM iotpipe.etl_stage_hourly s
         WHERE h.sensor_key = s.sensor_key AND h.hour_start = s.hour_start;
        run.rows_written := emitted.facts_new + emitted.facts_changed;
        run.hours_refreshed := emitted.hours;
        run.days_refreshed := emitted.days;
    END IF;

    ---------------------------------------------------------------- daily roll-up
    PERFORM iotpipe._etl_progress(run.run_id, 'daily roll-up', t0);
    -- from the hourly rows: n, sum and sum of squares add up
    INSERT INTO iotpipe_dw.fact_sensor_daily AS d
    SELECT a.sensor_key, a.date_key, a.location_key, a.readings, a.hours,
           a.t_s / nullif(a.t_n, 0), a.t_min, a.t_max,
           CASE WHEN a.t_n > 1 THEN sqrt(greatest((a.t_q - a.t_s * a.t_s / a.t_n) / (a.t_n - 1), 0)) END,
           a.h_s / nullif(a.h_n, 0), a.h_min, a.h_max,
           CASE WHEN a.h_n > 1 THEN sqrt(greatest((a.h_q - a.h_s * a.h_s / a.h_n) / (a.h_n - 1), 0)) END,
           a.anomalies, a.duplicates
      FROM (SELECT h.sensor_key, h.date_key, min(h.location_key) AS location_key,
                   sum(h.readings) AS readings, count(*) AS hours,
                   sum(h.temperature_n) AS t_n, sum(h.temperature_n * h.temperature_avg) AS t_s,
                   sum((h.temperature_n - 1) * coalesce(h.temperature_stddev ^ 2, 0)
                       + h.temperature_n * h.temperature_avg ^ 2) AS t_q,
                   min(h.temperature_min) AS t_min, max(h.temperature_max) AS t_max,
                   sum(h.humidity_n) AS h_n, sum(h.humidity_n * h.humidity_avg) AS h_s,
                   sum((h.humidity_n - 1) * coalesce(h.humidity_stddev ^ 2, 0)
                       + h.humidity_n * h.humidity_avg ^ 2) AS h_q,
                   min(h.humidity_min) AS h_min, max(h.humidity_max) AS h_max,
                   sum(h.anomalies) AS anomalies, sum(h.duplicates) AS duplicates
              FROM (SELECT h.* FROM iotpipe_dw.fact_sensor_hourly h WHERE full_load
                    UNION ALL
                    -- the days touched, through the primary key
                    SELECT h.* FROM iotpipe.etl_stage_days sd
                      JOIN iotpipe_dw.fact_sensor_hourly h
                        ON h.sensor_key = sd.sensor_key AND h.hour_start >= sd.day_start
                       AND h.hour_start < sd.day_start + interval '1 day'
                     WHERE NOT full_load) h
             GROUP BY h.sensor_key, h.date_key) a
    ON CONFLICT (sensor_key, date_key) DO UPDATE
       SET location_key = excluded.location_key, readings = excluded.readings,
           hours_with_data = excluded.hours_with_data,
           temperature_avg = excluded.temperature_avg, temperature_min = excluded.temperature_min,
           temperature_max = excluded.temperature_max, temperature_stddev = excluded.temperature_stddev,
           humidity_avg = excluded.humidity_avg, humidity_min = excluded.humidity_min,
           humidity_max = excluded.humidity_max, humidity_stddev = excluded.humidity_stddev,
           anomalies = excluded.anomalies, duplicates = excluded.duplicates;
    IF full_load THEN
        GET DIAGNOSTICS n = ROW_COUNT;
        run.days_refreshed := n;
        -- fresh files have no statistics: give the next (incremental) run good plans
        ANALYZE iotpipe_dw.fact_reading, iotpipe_dw.fact_sensor_hourly, iotpipe_dw.fact_sensor_daily;
    END IF;
    DELETE FROM iotpipe.etl_pending p WHERE run.until IS NULL OR p.ts < run.until;

    -- Summarize the BRIN ranges of the partitions this run read, partial
    -- last ranges included (VACUUM leaves those out): the next run then
    -- skips every page read now instead of reading it again.  A partition
    -- busy with VACUUM is left for next time.
    PERFORM iotpipe._etl_progress(run.run_id, 'summarizing BRIN ranges', t0);
    FOR part IN
        SELECT ix.indexrelid::regclass AS idx, ix.indrelid::regclass AS tab
          FROM pg_inherits pi
          JOIN pg_class t ON t.oid = pi.inhrelid
          JOIN pg_index ix ON ix.indrelid = t.oid
          JOIN pg_class i ON i.oid = ix.indexrelid
         WHERE pi.inhparent = 'iotpipe.readings'::regclass
           AND i.relname = t.relname || '_ingest_xid_idx'
           -- readings_pYYYYMMDD, readings_pYYYYMM, readings_pYYYY overlapping the window
           AND t.relname LIKE 'readings\_p%'
           AND substring(t.relname FROM 11)
               BETWEEN left(to_char(run.window_start, 'YYYYMMDD'), length(t.relname) - 10)
                   AND left(to_char(run.window_end, 'YYYYMMDD'), length(t.relname) - 10)
    LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE NOWAIT', part.tab);
            PERFORM brin_summarize_new_values(part.idx);
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    RETURN run;
END
$$;
CREATE OR REPLACE FUNCTION iotpipe.run_etl(until timestamptz DEFAULT NULL) RETURNS iotpipe.etl_runs
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    -- the readings are held by src/etl.c, not by executor sorts; work_mem
    -- serves the daily roll-up of a full load (one group per sensor-day)
    SET work_mem = '64MB'
    -- a full load builds the fact indexes once: sort them in memory;
    -- change with ALTER FUNCTION ... SET
    SET maintenance_work_mem = '1GB'
AS
$$
DECLARE
    run  iotpipe.etl_runs;
    res  iotpipe.etl_runs;
    msg  text;
    det  text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_state',
            MESSAGE = 'iotpipe.run_etl() must run at isolation level read committed',
            DETAIL = 'Its snapshot must be taken after it holds the ETL lock, so that it sees the previous run.',
            HINT = 'Call it in its own transaction, or SET TRANSACTION ISOLATION LEVEL READ COMMITTED.';
    END IF;
    -- one run at a time; a second caller waits (iotpipe.etl_lock_timeout at
    -- most), then runs on what is new
    PERFORM iotpipe._etl_lock();
    -- after a restore: this server's watermark first (60_backup.sql)
    IF NOT iotpipe._restore_finish() THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = 'a restore into this database is running',
            DETAIL = format('Session %s is restoring this database; the warehouse waits for it to end.',
                            iotpipe._restore_running()),
            HINT = 'Run iotpipe.run_etl() when the restore has finished.';
    END IF;
    -- the snapshot is taken by this statement, after the lock: the previous
    -- run has committed and is visible
    INSERT INTO iotpipe.etl_runs (status, until, snapshot, watermark)
    VALUES ('running', until, pg_current_snapshot(), pg_snapshot_xmin(pg_current_snapshot()))
    RETURNING * INTO run;
    BEGIN
        res := iotpipe._run_etl(run);
        res.status := 'ok';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_CONTEXT;
        res := run;
        res.status := 'failed';
        res.error := msg;
        RAISE WARNING 'iotpipe etl run % failed: %', run.run_id, msg
            USING DETAIL = 'Nothing of it was kept; the next run takes the same readings again.';
    END;
    res.finished_at := clock_timestamp();
    res.duration := res.finished_at - res.started_at;
    UPDATE iotpipe.etl_runs r
       SET status = res.status, finished_at = res.finished_at, duration = res.duration,
           window_start = res.window_start, window_end = res.window_end,
           rows_read = res.rows_read, rows_deferred = res.rows_deferred,
           rows_written = res.rows_written, hours_refreshed = res.hours_refreshed,
           days_refreshed = res.days_refreshed, sensor_versions = res.sensor_versions,
           error = res.error
     WHERE r.run_id = run.run_id
    RETURNING * INTO res;
    RAISE NOTICE 'iotpipe etl run %: % in % s, % rows read, % written, % hours refreshed',
        res.run_id, res.status, round(extract(epoch FROM res.duration)::numeric, 3),
        res.rows_read, res.rows_written, res.hours_refreshed;
    RETURN res;
END
$$;
CREATE OR REPLACE FUNCTION iotpipe.reset_warehouse() RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS
$$
BEGIN
    PERFORM iotpipe._etl_lock();
    TRUNCATE iotpipe_dw.fact_reading, iotpipe_dw.fact_sensor_hourly, iotpipe_dw.fact_sensor_daily,
             iotpipe_dw.dim_sensor, iotpipe_dw.dim_date, iotpipe.etl_runs, iotpipe.etl_pending
       RESTART IDENTITY;
    DELETE FROM iotpipe_dw.dim_location WHERE location_key <> 0;
    PERFORM setval(pg_get_serial_sequence('iotpipe_dw.dim_location', 'location_key'), 1, false);
END
$$;
CREATE OR REPLACE FUNCTION iotpipe.apply_retention(retention interval) RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    -- dropping a partition takes ACCESS EXCLUSIVE on iotpipe.readings: wait
    -- for it briefly (ingest queues behind the wait), never for a reader
    -- idle in its transaction
    SET lock_timeout = '1s'
AS
$$
DECLARE
    cutoff    timestamptz;
    last_snap pg_snapshot;
    p         record;
    busy      bool;
    dropped   int := 0;
BEGIN
    IF retention IS NULL OR retention <= interval '0' THEN
        RETURN 0;
    END IF;
    cutoff := now() - retention;
    PERFORM iotpipe._etl_lock();
    SELECT r.snapshot INTO last_snap FROM iotpipe.etl_runs r
     WHERE r.status = 'ok' ORDER BY r.run_id DESC LIMIT 1;
    IF last_snap IS NULL THEN
        RETURN 0;
    END IF;
    FOR p IN
        SELECT b.rel,
               CASE length(b.d)
                   WHEN 8 THEN to_date(b.d, 'YYYYMMDD') + 1
                   WHEN 6 THEN (to_date(b.d, 'YYYYMM') + interval '1 month')::date
                   ELSE (to_date(b.d, 'YYYY') + interval '1 year')::date
               END AS day_after
          FROM (SELECT c.oid::regclass AS rel,
                       substring(c.relname FROM '^readings_p(\d{8}|\d{6}|\d{4})$') AS d
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'iotpipe.readings'::regclass
                   AND c.relname ~ '^readings_p(\d{8}|\d{6}|\d{4})$') b
         ORDER BY 2
    LOOP
        -- the whole range must be past the retention
        EXIT WHEN p.day_after::timestamp AT TIME ZONE 'UTC' > cutoff;
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', p.rel);
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'iotpipe retention: % is in use, kept for now', p.rel;
            CONTINUE;
        END;
        EXECUTE format('SELECT EXISTS (SELECT FROM %s r WHERE (r.ingest_xid::text)::bigint >= $1'
                       ' AND NOT pg_visible_in_snapshot(r.ingest_xid, $2))', p.rel)
           INTO busy USING pg_snapshot_xmin(last_snap)::text::bigint, last_snap;
        IF busy THEN
            RAISE NOTICE 'iotpipe retention: % holds readings the ETL has not processed yet, kept', p.rel;
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE format('DROP TABLE %s', p.rel);
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'iotpipe retention: iotpipe.readings is in use, % and older ranges kept for now', p.rel;
            EXIT;
        END;
        dropped := dropped + 1;
    END LOOP;
    IF dropped > 0 THEN
        RAISE LOG 'iotpipe retention: dropped % raw partitions older than %', dropped, cutoff;
    END IF;
    RETURN dropped;
END
$$;
COMMENT ON FUNCTION iotpipe.apply_retention(interval) IS
    'drop raw partitions whose whole range (day, month or year) is older than retention and that the ETL has fully processed; returns how many';
-- the rule-limit check serializes on the extension's own lock too (any role
-- could hold pg_advisory_xact_lock(hashtext('iotpipe.alert_rules_limit')))
CREATE FUNCTION iotpipe._alert_rules_lock() RETURNS void
    LANGUAGE c VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'iotpipe_alert_rules_lock';
REVOKE EXECUTE ON FUNCTION iotpipe._alert_rules_lock() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION iotpipe._alert_rules_lock() TO iotpipe_admin;
CREATE OR REPLACE FUNCTION iotpipe._alert_rules_limit() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    n bigint;
BEGIN
    PERFORM iotpipe._alert_rules_lock();
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
-- restore finishes under the same lock as run_etl
CREATE OR REPLACE FUNCTION iotpipe._restore_finish() RETURNS bool LANGUAGE plpgsql
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
-- end hardening: partitions and locks
