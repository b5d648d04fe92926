-- iotpipe demo initialisation, run once by the compose "init" service (docker/init.sh)
-- against the iotpipe database: the extension, a login for the dashboard, a few alert
-- rules, the Kafka source and the simulator producing into Kafka.  Idempotent.
-- Plain SQL (no psql meta-commands): test/integration/test_docker_files.py runs it
-- against the test cluster inside a rolled-back transaction.

CREATE EXTENSION IF NOT EXISTS iotpipe;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotpipe_dashboard') THEN
        CREATE ROLE iotpipe_dashboard LOGIN PASSWORD 'dashboard' IN ROLE iotpipe_operator;
    END IF;
END
$$;

INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold,
                                 for_duration, severity, description)
VALUES ('overheating', 'threshold', 'temperature', NULL, '>', 45, 42, '2 s', 'critical',
        'any sensor above 45 °C for 2 s'),
       ('cold room too warm', 'threshold', 'temperature', 'warehouse/cold-room', '>', 8, 6, '5 s',
        'warning', 'the cold room must stay below 8 °C'),
       ('humid', 'threshold', 'humidity', NULL, '>', 95, 90, '10 s', 'info', 'condensation risk')
ON CONFLICT (name) DO NOTHING;
INSERT INTO iotpipe.alert_rules (name, kind, for_duration, severity, description)
VALUES ('sensor offline', 'offline', '30 s', 'warning', 'no reading for 30 s')
ON CONFLICT (name) DO NOTHING;
INSERT INTO iotpipe.alert_rules (name, kind, metric, threshold, severity, description)
VALUES ('temperature anomaly', 'anomaly', 'temperature', 6, 'info', 'far from the sensor''s own recent behaviour')
ON CONFLICT (name) DO NOTHING;

-- Kafka source: the broker of the compose file, topic created by the kafka-init service.
SELECT iotpipe.kafka_start(brokers => 'kafka:9092', topic => 'iot.readings', group_id => 'iotpipe',
                           workers => 2)
 WHERE NOT EXISTS (SELECT FROM iotpipe.kafka_sources WHERE topic = 'iot.readings');

-- The simulator produces contract messages into that topic (100 sensors, 1000 readings/s).
SELECT iotpipe.simulator_start(sensors => 100, rate => 1000, sink => 'kafka',
                               topic => 'iot.readings', brokers => 'kafka:9092');
