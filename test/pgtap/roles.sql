-- Privileges of the three iotpipe roles, checked both as catalog facts and by
-- acting as each role.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(66);

-- the roles exist and cannot log in by themselves
SELECT has_role('iotpipe_analyst');
SELECT has_role('iotpipe_operator');
SELECT has_role('iotpipe_admin');
SELECT is((SELECT count(*)::int FROM pg_roles
            WHERE rolname IN ('iotpipe_analyst', 'iotpipe_operator', 'iotpipe_admin')
              AND NOT rolcanlogin AND NOT rolsuper), 3, 'the three roles are NOLOGIN, not superusers');

------------------------------------------------------------------ analyst
SELECT ok(has_schema_privilege('iotpipe_analyst', 'iotpipe_dw', 'USAGE'), 'analyst: USAGE on iotpipe_dw');
SELECT ok(NOT has_schema_privilege('iotpipe_analyst', 'iotpipe_dw', 'CREATE'), 'analyst: no CREATE in iotpipe_dw');
SELECT ok(NOT has_schema_privilege('iotpipe_analyst', 'iotpipe', 'USAGE'), 'analyst: no USAGE on iotpipe');
SELECT is((SELECT count(*)::int FROM pg_tables t
            WHERE t.schemaname = 'iotpipe_dw'
              AND NOT has_table_privilege('iotpipe_analyst', format('%I.%I', t.schemaname, t.tablename), 'SELECT')),
          0, 'analyst: SELECT on every iotpipe_dw table');
SELECT is((SELECT count(*)::int FROM pg_tables t, unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                                              'REFERENCES', 'TRIGGER']) p
            WHERE t.schemaname = 'iotpipe_dw'
              AND has_table_privilege('iotpipe_analyst', format('%I.%I', t.schemaname, t.tablename), p)),
          0, 'analyst: no write privilege on any iotpipe_dw table');
SELECT is((SELECT count(*)::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'iotpipe' AND c.relkind IN ('r', 'p', 'v', 'm')
              AND has_table_privilege('iotpipe_analyst', c.oid, 'SELECT')),
          0, 'analyst: no SELECT on anything in iotpipe');
SELECT ok(NOT has_function_privilege('iotpipe_analyst', 'iotpipe.run_etl(timestamptz)', 'EXECUTE'),
          'analyst: cannot run the ETL');
SELECT ok(NOT has_function_privilege('iotpipe_analyst', 'iotpipe.ack_alert(bigint, text)', 'EXECUTE'),
          'analyst: cannot ack alerts');
SELECT ok(NOT has_column_privilege('iotpipe_analyst', 'iotpipe.kafka_sources', 'options', 'SELECT'),
          'analyst: cannot read source options');

SET LOCAL ROLE iotpipe_analyst;
SELECT lives_ok('SELECT count(*) FROM iotpipe_dw.fact_sensor_hourly h
                   JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
                   JOIN iotpipe_dw.dim_date d USING (date_key)',
                'analyst: reads the star schema');
SELECT lives_ok('SELECT count(*) FROM iotpipe_dw.fact_reading JOIN iotpipe_dw.dim_time USING (time_key)',
                'analyst: reads fact_reading and dim_time');
SELECT throws_ok('INSERT INTO iotpipe_dw.dim_location (location, site) VALUES (''x'', ''x'')', '42501',
                 NULL, 'analyst: cannot insert into the warehouse');
SELECT throws_ok('UPDATE iotpipe_dw.fact_sensor_hourly SET readings = 0', '42501',
                 NULL, 'analyst: cannot update the warehouse');
SELECT throws_ok('DELETE FROM iotpipe_dw.fact_reading', '42501', NULL, 'analyst: cannot delete from the warehouse');
SELECT throws_ok('TRUNCATE iotpipe_dw.fact_sensor_daily', '42501', NULL, 'analyst: cannot truncate the warehouse');
SELECT throws_ok('CREATE TABLE iotpipe_dw.mine (x int)', '42501', NULL, 'analyst: cannot create in iotpipe_dw');
SELECT throws_ok('SELECT count(*) FROM iotpipe.readings', '42501', NULL, 'analyst: cannot read raw readings');
SELECT throws_ok('SELECT count(*) FROM iotpipe.dead_letters', '42501', NULL, 'analyst: cannot read dead letters');
SELECT throws_ok('SELECT * FROM iotpipe.etl_runs', '42501', NULL, 'analyst: cannot read the ETL runs');
SELECT throws_ok('SELECT iotpipe.run_etl()', '42501', NULL, 'analyst: cannot run the ETL');
SELECT throws_ok('SELECT iotpipe.reset_warehouse()', '42501', NULL, 'analyst: cannot reset the warehouse');
SELECT throws_ok('SELECT iotpipe.simulator_start()', '42501', NULL, 'analyst: cannot start the simulator');
RESET ROLE;

------------------------------------------------------------------ operator
SELECT ok(has_schema_privilege('iotpipe_operator', 'iotpipe', 'USAGE'), 'operator: USAGE on iotpipe');
SELECT ok(has_schema_privilege('iotpipe_operator', 'iotpipe_dw', 'USAGE'), 'operator: USAGE on iotpipe_dw');
SELECT is((SELECT count(*)::int FROM pg_tables t
            WHERE t.schemaname = 'iotpipe_dw'
              AND NOT has_table_privilege('iotpipe_operator', format('%I.%I', t.schemaname, t.tablename), 'SELECT')),
          0, 'operator: SELECT on every iotpipe_dw table');
SELECT is((SELECT count(*)::int FROM pg_tables t, unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p
            WHERE t.schemaname = 'iotpipe_dw'
              AND has_table_privilege('iotpipe_operator', format('%I.%I', t.schemaname, t.tablename), p)),
          0, 'operator: no write privilege on the warehouse');
SELECT ok(has_table_privilege('iotpipe_operator', 'iotpipe.readings', 'SELECT'), 'operator: reads readings');
SELECT ok(has_table_privilege('iotpipe_operator', 'iotpipe.alerts', 'SELECT'), 'operator: reads alerts');
SELECT ok(has_table_privilege('iotpipe_operator', 'iotpipe.etl_runs', 'SELECT'), 'operator: reads the ETL runs');
SELECT ok(has_table_privilege('iotpipe_operator', 'iotpipe.status', 'SELECT'), 'operator: reads the status view');
SELECT ok(NOT has_table_privilege('iotpipe_operator', 'iotpipe.readings', 'INSERT'), 'operator: cannot insert readings');
SELECT ok(NOT has_column_privilege('iotpipe_operator', 'iotpipe.kafka_sources', 'options', 'SELECT'),
          'operator: cannot read source options (secrets)');
SELECT ok(has_function_privilege('iotpipe_operator', 'iotpipe.ack_alert(bigint, text)', 'EXECUTE'),
          'operator: can ack alerts');
SELECT ok(NOT has_function_privilege('iotpipe_operator', 'iotpipe.run_etl(timestamptz)', 'EXECUTE'),
          'operator: cannot run the ETL');
SELECT ok(NOT has_function_privilege('iotpipe_operator',
          'iotpipe.simulator_start(int, float8, bigint, text, text, text, float8, timestamptz)', 'EXECUTE'),
          'operator: cannot start the simulator');

-- an alert to acknowledge, as the operator
INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold) VALUES ('roles-tap', 'threshold', 'temperature', '>', 1e9);
INSERT INTO iotpipe.alerts (rule_id, sensor_id, severity, state, value, started_at)
SELECT rule_id, 'roles-tap-sensor', 'warning', 'resolved', 1, now() FROM iotpipe.alert_rules WHERE name = 'roles-tap';
SET LOCAL ROLE iotpipe_operator;
SELECT lives_ok('SELECT count(*) FROM iotpipe.readings r, iotpipe_dw.fact_sensor_hourly h WHERE false',
                'operator: reads both schemas');
SELECT lives_ok($$SELECT iotpipe.ack_alert((SELECT alert_id FROM iotpipe.alerts WHERE sensor_id = 'roles-tap-sensor'))$$,
                'operator: acks an alert');
SELECT is((SELECT acked_by FROM iotpipe.alerts WHERE sensor_id = 'roles-tap-sensor'), session_user::text,
          'operator: the ack is recorded, as the session user (SET ROLE does not change it)');
SELECT throws_ok('UPDATE iotpipe.alerts SET state = ''resolved''', '42501', NULL,
                 'operator: cannot update alerts directly');
SELECT throws_ok('SELECT options FROM iotpipe.kafka_sources', '42501', NULL, 'operator: source options stay hidden');
SELECT throws_ok('SELECT iotpipe.run_etl()', '42501', NULL, 'operator: cannot run the ETL');
SELECT throws_ok('SELECT iotpipe.apply_retention()', '42501', NULL, 'operator: cannot apply retention');
SELECT throws_ok('DELETE FROM iotpipe_dw.fact_reading', '42501', NULL, 'operator: cannot change the warehouse');
RESET ROLE;

------------------------------------------------------------------ admin
SELECT ok(has_function_privilege('iotpipe_admin', 'iotpipe.run_etl(timestamptz)', 'EXECUTE'), 'admin: runs the ETL');
SELECT ok(has_function_privilege('iotpipe_admin', 'iotpipe.apply_retention()', 'EXECUTE'), 'admin: applies retention');
SELECT ok(has_function_privilege('iotpipe_admin', 'iotpipe.reset_warehouse()', 'EXECUTE'), 'admin: resets the warehouse');
SELECT ok(has_function_privilege('iotpipe_admin',
          'iotpipe.simulator_start(int, float8, bigint, text, text, text, float8, timestamptz)', 'EXECUTE'),
          'admin: starts the simulator');
SELECT ok(has_function_privilege('iotpipe_admin', 'iotpipe.simulator_stop()', 'EXECUTE'), 'admin: stops the simulator');
SELECT ok(has_function_privilege('iotpipe_admin', 'iotpipe.kafka_start(text, text, text, int, jsonb)', 'EXECUTE'),
          'admin: declares Kafka sources');
SET LOCAL ROLE iotpipe_admin;
SELECT lives_ok('SELECT iotpipe.run_etl()', 'admin: run_etl() runs');
SELECT is((SELECT status FROM iotpipe.etl_runs ORDER BY run_id DESC LIMIT 1), 'ok', 'admin: the run is recorded');
SELECT lives_ok('SELECT iotpipe.apply_retention()', 'admin: apply_retention() runs');
SELECT throws_ok('DELETE FROM iotpipe_dw.fact_reading', '42501', NULL,
                 'admin: changes the warehouse only through the ETL');
-- what an admin does day to day works as that role, not only as a superuser
RESET ROLE;
INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, op, threshold)
VALUES ('roles-tap-admin-hot', 'threshold', 'temperature', 'roles-tap-admin', '>', 50);
SET LOCAL ROLE iotpipe_admin;
SELECT lives_ok($$SELECT iotpipe.ingest_json(ARRAY[
                    '{"sensor_id":"roles-tap-admin","ts":"2019-05-05T10:00:00Z","temperature":60}',
                    'not json'])$$,
                'admin: ingest_json writes readings, a new partition, an alert and a dead letter');
SELECT is((SELECT count(*) FROM iotpipe.alerts WHERE sensor_id = 'roles-tap-admin' AND state = 'firing'), 1::bigint,
          'admin: the alert engine fired as the ingesting role');
SELECT lives_ok($$SELECT iotpipe.kafka_start('127.0.0.1:9', 'roles-tap-topic')$$, 'admin: kafka_start runs');
SELECT lives_ok($$SELECT iotpipe.kafka_stop('roles-tap-topic')$$, 'admin: kafka_stop runs');
SELECT lives_ok('SELECT iotpipe.simulator_start(rate => 1); SELECT iotpipe.simulator_stop()',
                'admin: simulator_start and simulator_stop run');
RESET ROLE;

------------------------------------------------------------------ PUBLIC
SELECT is(array_agg(f ORDER BY f), NULL, 'PUBLIC executes no admin function')
  FROM unnest(ARRAY['iotpipe.run_etl(timestamptz)', 'iotpipe.apply_retention()',
                    'iotpipe.apply_retention(interval)', 'iotpipe.reset_warehouse()',
                    'iotpipe._run_etl(iotpipe.etl_runs)',
                    'iotpipe.simulator_start(int, float8, bigint, text, text, text, float8, timestamptz)',
                    'iotpipe.simulator_stop()', 'iotpipe.ingest_json(text[], text)',
                    'iotpipe.create_partitions(date, date)', 'iotpipe.ack_alert(bigint, text)',
                    'iotpipe.kafka_start(text, text, text, int, jsonb)', 'iotpipe.kafka_stop(text)']) f
 WHERE has_function_privilege('public', f, 'EXECUTE');
SELECT is((SELECT count(*)::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw') AND c.relkind IN ('r', 'p', 'v', 'm')
              AND has_table_privilege('public', c.oid, 'SELECT')),
          0, 'PUBLIC reads no iotpipe table');
CREATE ROLE iotpipe_tap_nobody NOLOGIN;
SET LOCAL ROLE iotpipe_tap_nobody;
SELECT throws_ok('SELECT iotpipe.run_etl()', '42501', NULL, 'a role without grants cannot run the ETL');
SELECT throws_ok('SELECT count(*) FROM iotpipe_dw.fact_reading', '42501', NULL,
                 'a role without grants cannot read the warehouse');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
