-- Hardening (issue 11): who may execute which function of the extension,
-- pinned search_path on every function, and ack_alert acknowledging as the
-- session user.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(21);

------------------------------------------------------------------ EXECUTE grants
-- Every function of iotpipe and iotpipe_dw with the roles that may execute it
-- (the owner, whoever installed the extension, left out; PUBLIC spelled out).
-- This list is reviewed: a new function, or a grant nobody reviewed, fails
-- here until it is added with the roles it needs (DESIGN.md: roles).
CREATE TEMP VIEW fn_grants AS
SELECT p.oid::regprocedure::text || ': '
       || coalesce((SELECT string_agg(g.who, ' ' ORDER BY g.who)
                      FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                        ELSE pg_get_userbyid(a.grantee) END AS who
                              FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                             WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner) g),
                   '(owner only)') AS line
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('iotpipe', 'iotpipe_dw');

SELECT set_eq('SELECT line FROM fn_grants', $$VALUES
    ('iotpipe._alert_payload(bigint,integer,text,text,text,text,text,text,text,text,double precision,double precision,double precision,timestamp with time zone,timestamp with time zone): iotpipe_admin'),
    ('iotpipe._alert_rules_changed(): (owner only)'),
    ('iotpipe._alert_rules_lock(): iotpipe_admin'),
    ('iotpipe._alert_rules_update(): (owner only)'),
    ('iotpipe._alert_timers(timestamp with time zone): iotpipe_admin'),
    ('iotpipe._alerts_changed(): (owner only)'),
    ('iotpipe._etl_collect(text,bigint,pg_snapshot,pg_snapshot,timestamp with time zone): (owner only)'),
    ('iotpipe._etl_date_key(date): (owner only)'),
    ('iotpipe._etl_emit(boolean): (owner only)'),
    ('iotpipe._etl_lock(): (owner only)'),
    ('iotpipe._etl_progress(bigint,text,timestamp with time zone): (owner only)'),
    ('iotpipe._alert_notify(text): iotpipe_admin'),
    ('iotpipe._alert_rules_limit(): (owner only)'),
    ('iotpipe._kafka_check_options(text[],text[],text[]): iotpipe_admin'),
    ('iotpipe._require_worker_database(): iotpipe_admin'),
    ('iotpipe._restore_finish(): iotpipe_admin'),
    ('iotpipe._restore_running(): (owner only)'),
    ('iotpipe._run_etl(iotpipe.etl_runs): (owner only)'),
    ('iotpipe._silenced(integer,text,text,timestamp with time zone): iotpipe_admin'),
    ('iotpipe._simulator_singleton(): (owner only)'),
    ('iotpipe._wake_launcher(): iotpipe_admin'),
    ('iotpipe.ack_alert(bigint,text): iotpipe_admin iotpipe_operator'),
    ('iotpipe.apply_retention(): iotpipe_admin'),
    ('iotpipe.apply_retention(interval): iotpipe_admin'),
    ('iotpipe.create_partitions(date,date): iotpipe_admin'),
    ('iotpipe.ingest_json(text[],text): iotpipe_admin'),
    ('iotpipe.ingest_json_bytes(bytea[],text): iotpipe_admin'),
    ('iotpipe.kafka_start(text,text,text,integer,jsonb): iotpipe_admin'),
    ('iotpipe.kafka_stop(text): iotpipe_admin'),
    ('iotpipe.reset_warehouse(): iotpipe_admin'),
    ('iotpipe.run_etl(timestamp with time zone): iotpipe_admin'),
    ('iotpipe.simulate(integer,bigint,bigint,timestamp with time zone,double precision): iotpipe_admin'),
    ('iotpipe.simulator_start(integer,double precision,bigint,text,text,text,double precision,timestamp with time zone): iotpipe_admin'),
    ('iotpipe.simulator_stop(): iotpipe_admin'),
    ('iotpipe.worker_status(): iotpipe_admin iotpipe_operator'),
    ('iotpipe._receiver_check(): (owner only)'),
    ('iotpipe._receiver_renamed(): (owner only)'),
    ('iotpipe._wake_notifier(): iotpipe_admin'),
    ('iotpipe._delivery_payload(bigint,integer,text,text,text,text,text,text,text,text,double precision,double precision,double precision,timestamp with time zone,timestamp with time zone): iotpipe_admin'),
    ('iotpipe._outbox_enqueue(bigint[],text[],text[],text[],text[],text[],text[]): iotpipe_admin'),
    ('iotpipe.test_receiver(text): iotpipe_admin')
$$, 'every function of iotpipe and iotpipe_dw is executable by exactly the reviewed roles');

-- No function of the schemas is meant for PUBLIC.
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw')
              AND has_function_privilege('public', p.oid, 'EXECUTE')),
          NULL, 'PUBLIC executes no function of iotpipe or iotpipe_dw');
-- and a role with no grant at all can call none (granted through nothing)
CREATE ROLE iotpipe_tap_nogrant NOLOGIN;
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw')
              AND has_function_privilege('iotpipe_tap_nogrant', p.oid, 'EXECUTE')),
          NULL, 'a role without iotpipe grants executes no function of the extension');
-- the analyst reads the warehouse and calls nothing
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw')
              AND has_function_privilege('iotpipe_analyst', p.oid, 'EXECUTE')),
          NULL, 'iotpipe_analyst executes no function of the extension');

------------------------------------------------------------------ search_path
-- Every function pins search_path to pg_catalog first and no schema a role
-- can write (the Kafka functions included).
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw')
              AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp']
                               OR p.proconfig @> ARRAY['search_path=pg_catalog, iotpipe, pg_temp'], false)),
          NULL, 'every function pins search_path to pg_catalog, pg_temp');
-- a function pinned with a SET search_path naming another schema would pass
-- the check above only by mistake: no other value is used
SELECT is((SELECT array_agg(DISTINCT c ORDER BY c)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, unnest(p.proconfig) c
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw') AND c LIKE 'search_path=%'),
          ARRAY['search_path=pg_catalog, pg_temp'], 'one search_path for every pinned function');
SELECT ok(NOT has_schema_privilege('iotpipe_admin', 'iotpipe', 'CREATE')
          AND NOT has_schema_privilege('iotpipe_operator', 'iotpipe', 'CREATE')
          AND NOT has_schema_privilege('public', 'iotpipe', 'CREATE')
          AND NOT has_schema_privilege('public', 'iotpipe_dw', 'CREATE'),
          'no role below the owner creates objects in the extension''s schemas');

------------------------------------------------------------------ ack_alert
-- Logins as an operator would have them: SET SESSION AUTHORIZATION changes
-- session_user (SET ROLE does not).
CREATE ROLE iotpipe_tap_op LOGIN IN ROLE iotpipe_operator;
CREATE ROLE iotpipe_tap_op2 LOGIN IN ROLE iotpipe_operator;
CREATE ROLE iotpipe_tap_adm LOGIN IN ROLE iotpipe_admin;
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold)
VALUES ('security-tap', 'threshold', 'temperature', '>', 1e9);
INSERT INTO iotpipe.alerts (rule_id, sensor_id, severity, state, value, started_at)
SELECT rule_id, 'sec-tap-' || i, 'warning', 'resolved', 1, now()
  FROM iotpipe.alert_rules, generate_series(1, 6) i WHERE name = 'security-tap';
CREATE TEMP TABLE tap_alert AS
SELECT sensor_id, alert_id FROM iotpipe.alerts WHERE sensor_id LIKE 'sec-tap-%';
GRANT SELECT ON tap_alert TO PUBLIC;

SET SESSION AUTHORIZATION iotpipe_tap_op;
SELECT is(session_user::text, 'iotpipe_tap_op', 'the session user is the operator login');
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-1'))),
          'iotpipe_tap_op', 'operator: the default acknowledges as the session user');
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-2'),
                                                  'iotpipe_tap_op')),
          'iotpipe_tap_op', 'operator: naming oneself is allowed');
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-6'),
                                                  NULL)),
          'iotpipe_tap_op', 'operator: a NULL name is the session user');
SELECT throws_ok($$SELECT iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-3'),
                                             'iotpipe_tap_op2')$$,
                 '42501', 'only iotpipe_admin may acknowledge for another user',
                 'operator: cannot acknowledge as another operator');
SELECT throws_ok($$SELECT iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-3'),
                                             'night shift')$$,
                 '42501', 'only iotpipe_admin may acknowledge for another user',
                 'operator: cannot acknowledge under a made-up name');
-- the refusal has a hint
CREATE FUNCTION pg_temp.ack_hint(id bigint, who text) RETURNS text LANGUAGE plpgsql AS
$$
DECLARE
    h text;
BEGIN
    PERFORM iotpipe.ack_alert(id, who);
    RETURN NULL;
EXCEPTION WHEN insufficient_privilege THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RETURN h;
END
$$;
SELECT is(pg_temp.ack_hint((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-3'), 'someone'),
          'Leave out acked_by to acknowledge as yourself.', 'operator: the refusal says what to do');
-- SET ROLE to the group does not make the group the acknowledger
SET ROLE iotpipe_operator;
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-4'))),
          'iotpipe_tap_op', 'operator after SET ROLE: still acknowledges as the login');
SELECT throws_ok($$SELECT iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-3'),
                                             'iotpipe_operator')$$,
                 '42501', 'only iotpipe_admin may acknowledge for another user',
                 'operator after SET ROLE: cannot acknowledge as the current role');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT is((SELECT acked_at IS NULL AND acked_by IS NULL FROM iotpipe.alerts
            WHERE alert_id = (SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-3')),
          true, 'a refused acknowledgement changed nothing');

SET SESSION AUTHORIZATION iotpipe_tap_adm;
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-3'),
                                                  'night shift')),
          'night shift', 'admin: acknowledges for another user');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-5'),
                                                  'iotpipe_tap_op2')),
          'iotpipe_tap_op2', 'superuser: acknowledges for another user');
-- the first acknowledgement is kept, and re-acknowledging as oneself is fine
SET SESSION AUTHORIZATION iotpipe_tap_op2;
SELECT is((SELECT acked_by FROM iotpipe.ack_alert((SELECT alert_id FROM tap_alert WHERE sensor_id = 'sec-tap-1'))),
          'iotpipe_tap_op', 'the first acknowledgement is kept');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT pg_get_function_arguments('iotpipe.ack_alert(bigint, text)'::regprocedure)),
          'alert_id bigint, acked_by text DEFAULT SESSION_USER', 'ack_alert keeps its signature');

SELECT * FROM finish();
ROLLBACK;
