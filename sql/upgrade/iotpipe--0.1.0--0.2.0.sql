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
