/*-------------------------------------------------------------------------
 *
 * partition.c
 *	  Daily partitions of iotpipe.readings, named readings_pYYYYMMDD and
 *	  covering one UTC day each.  The launcher keeps iotpipe.partition_premake
 *	  days created ahead; the ingest core creates a missing one on demand
 *	  (late or historical data) before it takes any lock on the table.
 *
 *	  Creation runs as the owner of iotpipe.readings, so that roles allowed
 *	  to ingest need not own the table, and is serialized by an advisory
 *	  lock so that concurrent workers never race on the same name.
 *
 *	  Each partition gets its own two indexes, made here and named
 *	  <partition>_sensor_id_ts_idx and <partition>_ingest_xid_idx (BRIN):
 *	  iotpipe.readings has no partitioned index.  A partition is not a
 *	  member of the extension, so pg_dump dumps it with its indexes; had
 *	  the extension's script made an index on the parent, ATTACH PARTITION
 *	  in the restore would build a copy of it on each partition before
 *	  pg_restore's own CREATE INDEX of the same name, which then fails
 *	  (README, "Backup and restore").
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "partition.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/date.h"
#include "utils/syscache.h"
#include "catalog/pg_class.h"
#include "access/htup_details.h"
#include "fmgr.h"

#define PARTITION_LOCK_KEY 0x696f7470	/* 'iotp' */

int32
iotpipe_ts_day(TimestampTz ts)
{
	int64		d = ts / USECS_PER_DAY;

	if (ts < 0 && ts % USECS_PER_DAY != 0)
		d--;
	return (int32) d;
}

static void
partition_name(int32 day, char *buf, size_t len)
{
	int			y,
				m,
				d;

	j2date(day + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	snprintf(buf, len, "readings_p%04d%02d%02d", y, m, d);
}

/*
 * The indexes every partition has (the ETL reads the BRIN one by its name,
 * iotpipe._run_etl).  The names are the ones PostgreSQL chose when 0.1.0
 * cloned them from partitioned indexes; under 0.1.0's SQL (partitioned
 * indexes, before ALTER EXTENSION UPDATE) the clones are there already.
 */
static void
partition_create_indexes(Oid nsp, const char *name)
{
	static const char *const suffix[2] = {"sensor_id_ts_idx", "ingest_xid_idx"};
	static const char *const def[2] = {
		"(sensor_id, ts)",
		"USING brin (((ingest_xid::pg_catalog.text)::pg_catalog.int8)) WITH (pages_per_range = 32)"
	};
	int			i;

	for (i = 0; i < 2; i++)
	{
		char		idx[NAMEDATALEN * 2];
		char		sql[512];

		snprintf(idx, sizeof(idx), "%s_%s", name, suffix[i]);
		if (OidIsValid(get_relname_relid(idx, nsp)))
			continue;
		snprintf(sql, sizeof(sql), "CREATE INDEX %s ON iotpipe.%s %s", idx, name, def[i]);
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not index partition %s", name);
	}
}

static bool
partition_exists(Oid nsp, int32 day)
{
	char		name[NAMEDATALEN];

	partition_name(day, name, sizeof(name));
	return OidIsValid(get_relname_relid(name, nsp));
}

/*
 * Create the missing partitions for from_day..to_day (days since
 * 2000-01-01).  Returns how many were created.
 */
int
iotpipe_create_partitions_range(int32 from_day, int32 to_day)
{
	Oid			nsp = get_namespace_oid("iotpipe", false);
	Oid			parent = get_relname_relid("readings", nsp);
	Oid			owner;
	Oid			save_userid;
	int			save_sec;
	int32		day;
	int			created = 0;
	bool		any_missing = false;
	LOCKTAG		tag;

	if (!OidIsValid(parent))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"iotpipe.readings\" does not exist")));
	if (to_day - from_day > 3660)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many partitions requested: %d", to_day - from_day + 1),
				 errhint("Create at most ten years of partitions at once.")));

	for (day = from_day; day <= to_day && !any_missing; day++)
		any_missing = !partition_exists(nsp, day);
	if (!any_missing)
		return 0;

	/* serialize creators, then look again with fresh catalogs */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, PARTITION_LOCK_KEY, 1);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	AcceptInvalidationMessages();

	{
		HeapTuple	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(parent));

		if (!HeapTupleIsValid(tp))
			elog(ERROR, "cache lookup failed for relation %u", parent);
		owner = ((Form_pg_class) GETSTRUCT(tp))->relowner;
		ReleaseSysCache(tp);
	}

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		for (day = from_day; day <= to_day; day++)
		{
			char		name[NAMEDATALEN];
			char		sql[512];
			int			y1, m1, d1, y2, m2, d2;

			if (partition_exists(nsp, day))
				continue;
			partition_name(day, name, sizeof(name));
			j2date(day + POSTGRES_EPOCH_JDATE, &y1, &m1, &d1);
			j2date(day + 1 + POSTGRES_EPOCH_JDATE, &y2, &m2, &d2);
			snprintf(sql, sizeof(sql),
					 "CREATE TABLE iotpipe.%s PARTITION OF iotpipe.readings "
					 "FOR VALUES FROM ('%04d-%02d-%02d 00:00:00+00') TO ('%04d-%02d-%02d 00:00:00+00')",
					 name, y1, m1, d1, y2, m2, d2);
			if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "could not create partition %s", name);
			CommandCounterIncrement();
			partition_create_indexes(nsp, name);
			created++;
		}
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();

	if (created > 0)
		CommandCounterIncrement();
	return created;
}

void
iotpipe_ensure_partitions_for_days(int32 *days, int ndays)
{
	Oid			nsp = get_namespace_oid("iotpipe", false);
	int			i;

	for (i = 0; i < ndays; i++)
		if (!partition_exists(nsp, days[i]))
			iotpipe_create_partitions_range(days[i], days[i]);
}

PG_FUNCTION_INFO_V1(iotpipe_create_partitions);
Datum
iotpipe_create_partitions(PG_FUNCTION_ARGS)
{
	DateADT		from = PG_GETARG_DATEADT(0);
	DateADT		to = PG_GETARG_DATEADT(1);

	if (DATE_NOT_FINITE(from) || DATE_NOT_FINITE(to))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition range must be finite")));
	if (to < from)
		PG_RETURN_INT32(0);
	/* DateADT counts days since 2000-01-01, like our day numbers */
	PG_RETURN_INT32(iotpipe_create_partitions_range(from, to));
}
