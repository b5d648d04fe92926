-- iotpipe upgrade 0.1.0 -> 0.2.0.
-- Every change of src/sql/ between the two releases is repeated here, so that
-- ALTER EXTENSION iotpipe UPDATE gives the catalog of a fresh 0.2.0 install
-- (sql/90_upgrade.sql proves it).

\echo Use "ALTER EXTENSION iotpipe UPDATE" to load this file. \quit
