-- pg_temp.iotpipe_catalog(): the catalog of the iotpipe extension as sorted
-- text lines, for comparing an upgraded database with a fresh install
-- (sql/90_upgrade.sql).  Covers the schemas iotpipe and iotpipe_dw and
-- every member object of the extension: relations and their kind, columns
-- (position among live columns, type, collation, NOT NULL, default,
-- identity), constraints, indexes, views, triggers, sequences, functions
-- (arguments, result, volatility, strictness, SECURITY DEFINER, settings
-- such as search_path, body), types, policies, grants to every role and
-- PUBLIC, comments, extension membership and pg_dump configuration tables.
-- Partitions of iotpipe.readings are data (created per day) and left out.
-- One object a line: line breaks inside a definition become spaces.
CREATE FUNCTION pg_temp.iotpipe_catalog() RETURNS SETOF text
LANGUAGE sql STABLE AS $snapshot$
WITH ns AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace WHERE nspname IN ('iotpipe', 'iotpipe_dw')
), rel AS (
    SELECT c.oid, ns.nspname || '.' || c.relname AS name, c.relkind, c.relacl, c.reloptions,
           c.relpersistence, c.relrowsecurity
      FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
     WHERE NOT c.relispartition AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
), idx AS (
    SELECT i.indexrelid, i.indrelid FROM pg_catalog.pg_index i JOIN rel ON rel.oid = i.indrelid
), acl AS (
    -- grants of a relation, function or schema, one line per grantee and privilege
    SELECT objname, CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END
           || ' ' || a.privilege_type || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END AS g
      FROM (SELECT 'schema ' || n.nspname AS objname, n.nspacl AS acl, n.nspowner AS owner
              FROM pg_catalog.pg_namespace n JOIN ns USING (oid)
            UNION ALL
            SELECT 'relation ' || rel.name, rel.relacl, c.relowner
              FROM rel JOIN pg_catalog.pg_class c USING (oid)
            UNION ALL
            SELECT 'function ' || p.oid::regprocedure::text, p.proacl, p.proowner
              FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace) o,
           LATERAL pg_catalog.aclexplode(COALESCE(o.acl, pg_catalog.acldefault(
               CASE WHEN o.objname LIKE 'schema %' THEN 'n'
                    WHEN o.objname LIKE 'function %' THEN 'f' ELSE 'r' END::"char", o.owner))) a
)
SELECT line FROM (
    SELECT 'schema ' || n.nspname || ' owner ' || pg_catalog.pg_get_userbyid(n.nspowner)
           || ' comment ' || COALESCE(pg_catalog.obj_description(n.oid, 'pg_namespace'), '-') AS line
      FROM pg_catalog.pg_namespace n JOIN ns USING (oid)
    UNION ALL
    SELECT 'relation ' || name || ' kind ' || relkind::text || ' persistence ' || relpersistence::text
           || ' rls ' || relrowsecurity::text || ' options ' || COALESCE(reloptions::text, '-')
           || ' partitioned by ' || COALESCE(pg_catalog.pg_get_partkeydef(oid), '-')
           || ' comment ' || COALESCE(pg_catalog.obj_description(oid, 'pg_class'), '-')
      FROM rel
    UNION ALL
    SELECT 'column ' || rel.name || ' #' || row_number() OVER (PARTITION BY rel.oid ORDER BY a.attnum)
           || ' ' || a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                   THEN ' collate ' || (SELECT collname FROM pg_catalog.pg_collation WHERE oid = a.attcollation)
                   ELSE '' END
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
           || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
           || COALESCE(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
           || ' comment ' || COALESCE(pg_catalog.col_description(rel.oid, a.attnum), '-')
      FROM rel JOIN pg_catalog.pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    UNION ALL
    SELECT 'constraint ' || rel.name || ' ' || co.conname || ' ' || pg_catalog.pg_get_constraintdef(co.oid)
      FROM rel JOIN pg_catalog.pg_constraint co ON co.conrelid = rel.oid
    UNION ALL
    SELECT 'index ' || pg_catalog.pg_get_indexdef(idx.indexrelid)
           || ' comment ' || COALESCE(pg_catalog.obj_description(idx.indexrelid, 'pg_class'), '-')
      FROM idx
    UNION ALL
    SELECT 'view ' || name || ' ' || pg_catalog.regexp_replace(pg_catalog.pg_get_viewdef(oid), '\s+', ' ', 'g') FROM rel WHERE relkind IN ('v', 'm')
    UNION ALL
    SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(tg.oid)
      FROM rel JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = rel.oid AND NOT tg.tgisinternal
    UNION ALL
    SELECT 'policy ' || rel.name || ' ' || po.polname || ' ' || po.polcmd::text || ' '
           || COALESCE(pg_catalog.pg_get_expr(po.polqual, po.polrelid), '-') || ' '
           || COALESCE(pg_catalog.pg_get_expr(po.polwithcheck, po.polrelid), '-')
      FROM rel JOIN pg_catalog.pg_policy po ON po.polrelid = rel.oid
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text || ' kind ' || p.prokind::text
           || ' returns ' || pg_catalog.pg_get_function_result(p.oid)
           || ' args ' || pg_catalog.pg_get_function_arguments(p.oid)
           || ' language ' || l.lanname || ' volatility ' || p.provolatile::text
           || ' strict ' || p.proisstrict || ' security definer ' || p.prosecdef
           || ' parallel ' || p.proparallel::text || ' leakproof ' || p.proleakproof
           || ' config ' || COALESCE(p.proconfig::text, '-')
           || ' body ' || pg_catalog.md5(COALESCE(p.prosrc, '') || '/' || COALESCE(p.probin, ''))
           || ' comment ' || COALESCE(pg_catalog.obj_description(p.oid, 'pg_proc'), '-')
      FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
      JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    UNION ALL
    SELECT 'type ' || ns.nspname || '.' || t.typname || ' ' || t.typtype::text
           || COALESCE(' values ' || (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder)
                                        FROM pg_catalog.pg_enum WHERE enumtypid = t.oid), '')
      FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
     WHERE t.typtype IN ('e', 'd', 'r', 'm')
        OR (t.typtype = 'c' AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
    UNION ALL
    SELECT 'grant ' || objname || ' to ' || g FROM acl
    UNION ALL
    SELECT 'member ' || pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'iotpipe'
       -- the install script's helpers in pg_temp go with its session
       AND pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) !~ ' pg_temp_\d+\.'
       AND NOT (d.classid = 'pg_catalog.pg_class'::regclass
                AND (SELECT relispartition FROM pg_catalog.pg_class WHERE oid = d.objid))
    UNION ALL
    SELECT 'dump config ' || c.oid::regclass::text || ' ' || COALESCE(e.extcondition[i], '')
      FROM pg_catalog.pg_extension e, generate_subscripts(e.extconfig, 1) AS i,
           LATERAL (SELECT e.extconfig[i] AS oid) c
     WHERE e.extname = 'iotpipe'
) s(line)
ORDER BY line
$snapshot$;
