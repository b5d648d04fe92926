/*-------------------------------------------------------------------------
 *
 * partition.c
 *	  The partitions of iotpipe.readings (range on ts, UTC).
 *
 *	  Layout: recent data (the last IOTPIPE_PARTITION_DAILY_DAYS days, today
 *	  and the days ahead) has one partition per UTC day, readings_pYYYYMMDD.
 *	  A reading whose time has no partition and is older than that gets the
 *	  coarsest partition that overlaps none that exists and ends before the
 *	  daily window: its year (readings_pYYYY) if the year has no partition
 *	  at all, else its month (readings_pYYYYMM), else its day.  Years of
 *	  history are then a few dozen partitions, not thousands: a batch of old
 *	  data needs few new ones, and plans prune over few.
 *
 *	  Creation never takes a lock that readers or inserters hold: a plain
 *	  CREATE TABLE (LIKE iotpipe.readings ...) then ALTER TABLE ... ATTACH
 *	  PARTITION, which takes SHARE UPDATE EXCLUSIVE on iotpipe.readings
 *	  (CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE, so one session
 *	  idle in a transaction after a SELECT stalled every ingest behind it).
 *	  ATTACH clones the parent's row triggers and checks the (empty) table
 *	  against the bound; the table gets the parent's columns, defaults,
 *	  CHECK constraints, storage and compression, its tablespace when it
 *	  has one, and its two indexes (below) before it is attached.  Creation runs as the
 *	  owner of iotpipe.readings and is serialized by the extension's own
 *	  lock (locks.c), which no SQL role can take.
 *
 *	  The launcher makes the daily partitions ahead (iotpipe_create_
 *	  partitions_range, lock_timeout and retry).  The ingest core asks, per
 *	  reading, for a partition covering its ts (iotpipe_partcheck): almost
 *	  always the one the previous reading was in.  When one must be made,
 *	  that happens in a subtransaction with a short lock wait; at most
 *	  IOTPIPE_PARTITION_MAX_NEW are made per transaction.  A reading whose
 *	  partition cannot be made now (the cap, a lock wait that timed out)
 *	  gets a reason starting with "held: ": the caller keeps it in
 *	  iotpipe.dead_letters and the launcher ingests it again later.
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
#include "locks.h"
#include "partition.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/tablespace.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/partcache.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

/* how long creation waits for a lock: ingest, and the launcher/SQL callers */
#define INGEST_LOCK_WAIT_MS 1000
#define UPKEEP_LOCK_WAIT_MS 1000

typedef struct PartSpec
{
	TimestampTz from;
	TimestampTz to;
	char		name[NAMEDATALEN];
} PartSpec;

typedef struct Segment
{
	TimestampTz lo;
	TimestampTz hi;
} Segment;

struct IotPartCheck
{
	Oid			parent;			/* iotpipe.readings, locked, not kept open */
	int			last;			/* index in touched[] of the last hit, or -1 */
	int32		horizon_day;	/* older than this: coarse partitions */
};

/*
 * What the ingest path did in the current transaction: the partitions it
 * made, whether a lock wait timed out, and the ranges of the partitions its
 * readings go to (each costs locks on the partition and its indexes until
 * the end of the transaction: at most IOTPIPE_PARTITION_MAX_TOUCHED).
 */
static LocalTransactionId xact_lxid = InvalidLocalTransactionId;
static int	made_in_xact = 0;
static bool gave_up_in_xact = false;
static Segment *touched = NULL;	/* in TopTransactionContext */
static int	ntouched = 0;

static void partcheck_subxact(SubXactEvent event, SubTransactionId sub,
							  SubTransactionId parent, void *arg);

int32
iotpipe_ts_day(TimestampTz ts)
{
	int64		d = ts / USECS_PER_DAY;

	if (ts < 0 && ts % USECS_PER_DAY != 0)
		d--;
	return (int32) d;
}

static inline TimestampTz
day_start(int32 day)
{
	return (TimestampTz) day * USECS_PER_DAY;
}

/*
 * The indexes every partition has (the ETL reads the BRIN one by its name,
 * iotpipe._run_etl).  The names are the ones PostgreSQL chose when 0.1.0
 * cloned them from partitioned indexes; they are made on the new table
 * before it is attached, so under 0.1.0's SQL (partitioned indexes, before
 * ALTER EXTENSION UPDATE) ATTACH adopts them instead of building clones.
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
		snprintf(sql, sizeof(sql), "CREATE INDEX %s ON iotpipe.%s %s",
				 quote_identifier(idx), quote_identifier(name), def[i]);
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not index partition %s", name);
	}
}

static inline int32
ymd_day(int y, int m, int d)
{
	return date2j(y, m, d) - POSTGRES_EPOCH_JDATE;
}

static void
format_ts(TimestampTz t, char *buf, size_t len)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	snprintf(buf, len, "%04d-%02d-%02d %02d:%02d:%02d.%06d+00",
			 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/* the value of range bound i (MINVALUE/MAXVALUE as -/+ infinity) */
static TimestampTz
bound_value(PartitionBoundInfo bi, int i)
{
	if (bi->kind != NULL && bi->kind[i][0] == PARTITION_RANGE_DATUM_MINVALUE)
		return DT_NOBEGIN;
	if (bi->kind != NULL && bi->kind[i][0] == PARTITION_RANGE_DATUM_MAXVALUE)
		return DT_NOEND;
	return DatumGetTimestampTz(bi->datums[i][0]);
}

/*
 * Does a partition of parent take a row with ts t?  Fills [lo, hi): the
 * partition's range, or the gap around t.  A default partition takes
 * everything (nothing is ever made then); a table partitioned otherwise
 * than by one range key is left to PostgreSQL's routing.
 */
static bool
find_segment_rel(Relation parent, TimestampTz t, TimestampTz *lo, TimestampTz *hi)
{
	PartitionDesc pd = RelationGetPartitionDesc(parent, true);
	PartitionBoundInfo bi = pd->boundinfo;
	int			a = 0,
				b;

	*lo = DT_NOBEGIN;
	*hi = DT_NOEND;
	if (pd->nparts == 0 || bi == NULL)
		return false;
	if (bi->strategy != PARTITION_STRATEGY_RANGE ||
		RelationGetPartitionKey(parent)->partnatts != 1 ||
		partition_bound_has_default(bi))
		return true;
	/* the first bound above t */
	b = bi->ndatums;
	while (a < b)
	{
		int			m = (a + b) / 2;

		if (bound_value(bi, m) <= t)
			a = m + 1;
		else
			b = m;
	}
	if (a > 0)
		*lo = bound_value(bi, a - 1);
	if (a < bi->ndatums)
		*hi = bound_value(bi, a);
	return bi->indexes[a] >= 0;
}

/*
 * The same for iotpipe.readings by OID, already locked by the caller.  The
 * relation is not kept open: ATTACH PARTITION refuses a table that the
 * session itself has open.
 */
static bool
find_segment(Oid parent, TimestampTz t, TimestampTz *lo, TimestampTz *hi)
{
	Relation	rel = relation_open(parent, NoLock);
	bool		covered = find_segment_rel(rel, t, lo, hi);

	relation_close(rel, NoLock);
	return covered;
}

/*
 * The partition to make for a reading at t in the gap [lo, hi): a year, a
 * month or a day (see the top of the file); a day clipped to the gap when
 * someone else's partition covers part of it.
 */
static void
choose_spec(TimestampTz t, TimestampTz lo, TimestampTz hi, int32 horizon_day, PartSpec *s)
{
	int32		day = iotpipe_ts_day(t);
	int			y,
				m,
				d;
	int32		a,
				b;

	j2date(day + POSTGRES_EPOCH_JDATE, &y, &m, &d);

	a = ymd_day(y, 1, 1);
	b = ymd_day(y + 1, 1, 1);
	if (b <= horizon_day && day_start(a) >= lo && day_start(b) <= hi)
	{
		s->from = day_start(a);
		s->to = day_start(b);
		snprintf(s->name, sizeof(s->name), "readings_p%04d", y);
		return;
	}
	a = ymd_day(y, m, 1);
	b = (m == 12) ? ymd_day(y + 1, 1, 1) : ymd_day(y, m + 1, 1);
	if (b <= horizon_day && day_start(a) >= lo && day_start(b) <= hi)
	{
		s->from = day_start(a);
		s->to = day_start(b);
		snprintf(s->name, sizeof(s->name), "readings_p%04d%02d", y, m);
		return;
	}
	s->from = Max(lo, day_start(day));
	s->to = Min(hi, day_start(day + 1));
	if (s->from == day_start(day) && s->to == day_start(day + 1))
		snprintf(s->name, sizeof(s->name), "readings_p%04d%02d%02d", y, m, d);
	else
		snprintf(s->name, sizeof(s->name), "readings_p%04d%02d%02d_%011lld", y, m, d,
				 (long long) (s->from - day_start(day)));
}

/* CREATE TABLE (LIKE) + ATTACH PARTITION, as the owner of iotpipe.readings */
static void
create_spec(Oid parent, const PartSpec *s, int lock_wait_ms)
{
	Relation	rel = relation_open(parent, NoLock);
	Oid			owner = rel->rd_rel->relowner;
	Oid			spc = rel->rd_rel->reltablespace;
	Oid			nsp = RelationGetNamespace(rel);
	Oid			save_userid;
	int			save_sec;
	int			nest;
	char		from[64],
				to[64],
				lt[32];
	char	   *sql;

	relation_close(rel, NoLock);
	format_ts(s->from, from, sizeof(from));
	format_ts(s->to, to, sizeof(to));

	nest = NewGUCNestLevel();
	snprintf(lt, sizeof(lt), "%d", Max(lock_wait_ms, 1));
	(void) set_config_option("lock_timeout", lt, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		sql = psprintf("CREATE TABLE iotpipe.%s (LIKE iotpipe.readings INCLUDING DEFAULTS "
					   "INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION "
					   "INCLUDING GENERATED)%s%s",
					   quote_identifier(s->name),
					   OidIsValid(spc) ? " TABLESPACE " : "",
					   OidIsValid(spc) ? quote_identifier(get_tablespace_name(spc)) : "");
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not create partition %s", s->name);
		CommandCounterIncrement();
		partition_create_indexes(nsp, s->name);
		sql = psprintf("ALTER TABLE iotpipe.readings ATTACH PARTITION iotpipe.%s "
					   "FOR VALUES FROM ('%s') TO ('%s')",
					   quote_identifier(s->name), from, to);
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not attach partition %s", s->name);
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	AtEOXact_GUC(true, nest);
}

/* take the creators' lock, or fail with lock_not_available */
static void
lock_creators(int wait_ms)
{
	if (!iotpipe_lock_xact(IOT_LOCK_PARTITIONS, wait_ms))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("partitions of iotpipe.readings are being created by another transaction"),
				 errdetail("It did not finish within %d ms.", wait_ms),
				 errhint("Try again in a moment.")));
	/* what others made before they let go is in the catalogs now */
	AcceptInvalidationMessages();
}

static Oid
lock_readings(LOCKMODE mode)
{
	Oid			nsp = get_namespace_oid("iotpipe", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("readings", nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"iotpipe.readings\" does not exist"),
				 errhint("Is the iotpipe extension installed in this database?")));
	LockRelationOid(relid, mode);
	return relid;
}

/*
 * Create the missing daily partitions for from_day..to_day (days since
 * 2000-01-01); days some partition covers already are skipped.  For the
 * launcher and iotpipe.create_partitions(): errors (a lock wait that timed
 * out) are thrown.  Returns how many were created.
 */
int
iotpipe_create_partitions_range(int32 from_day, int32 to_day)
{
	Oid			parent = lock_readings(AccessShareLock);
	int32		day;
	int			created = 0;
	bool		locked = false;
	TimestampTz lo,
				hi;

	for (day = from_day; day <= to_day; day++)
	{
		PartSpec	s;

		if (find_segment(parent, day_start(day), &lo, &hi))
			continue;
		if (!locked)
		{
			lock_creators(UPKEEP_LOCK_WAIT_MS);
			locked = true;
			if (find_segment(parent, day_start(day), &lo, &hi))
				continue;
		}
		choose_spec(day_start(day), lo, hi, PG_INT32_MIN, &s);
		create_spec(parent, &s, UPKEEP_LOCK_WAIT_MS);
		CommandCounterIncrement();
		created++;
	}
	return created;
}

/* ---------- the ingest path ---------- */

IotPartCheck *
iotpipe_partcheck_begin(void)
{
	static bool callback = false;
	IotPartCheck *pc = palloc0(sizeof(IotPartCheck));

	/* the lock the write takes next anyway */
	pc->parent = lock_readings(RowExclusiveLock);
	pc->horizon_day = iotpipe_ts_day(GetCurrentTimestamp()) - IOTPIPE_PARTITION_DAILY_DAYS;
	if (!callback)
	{
		RegisterSubXactCallback(partcheck_subxact, NULL);
		callback = true;
	}
	pc->last = -1;
	if (xact_lxid != MyProc->lxid || touched == NULL)
	{
		xact_lxid = MyProc->lxid;
		made_in_xact = 0;
		gave_up_in_xact = false;
		touched = MemoryContextAlloc(TopTransactionContext,
									 sizeof(Segment) * IOTPIPE_PARTITION_MAX_TOUCHED);
		ntouched = 0;
	}
	return pc;
}

void
iotpipe_partcheck_end(IotPartCheck *pc)
{
	pfree(pc);
}

static char *
day_text(TimestampTz t)
{
	int			y,
				m,
				d;

	j2date(iotpipe_ts_day(t) + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	return psprintf("%04d-%02d-%02d", y, m, d);
}

/* make a partition for t in a subtransaction; NULL, or why not */
static const char *
make_for(IotPartCheck *pc, TimestampTz t)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	const char *volatile reason = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		TimestampTz lo,
					hi;

		lock_creators(INGEST_LOCK_WAIT_MS);
		if (!find_segment(pc->parent, t, &lo, &hi))
		{
			PartSpec	s;

			choose_spec(t, lo, hi, pc->horizon_day, &s);
			create_spec(pc->parent, &s, INGEST_LOCK_WAIT_MS);
			made_in_xact++;
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		switch (e->sqlerrcode)
		{
			case ERRCODE_LOCK_NOT_AVAILABLE:
				gave_up_in_xact = true;
				/* FALLTHROUGH */
			case ERRCODE_OBJECT_IN_USE:
			case ERRCODE_DUPLICATE_TABLE:
			case ERRCODE_INVALID_OBJECT_DEFINITION:
			case ERRCODE_CHECK_VIOLATION:
				reason = psprintf("held: the partition of iotpipe.readings for %s could not be made now (%s); "
								  "the launcher ingests this reading again",
								  day_text(t), e->message);
				break;
			default:
				ReThrowError(e);
		}
	}
	PG_END_TRY();
	CommandCounterIncrement();
	return reason;
}

/*
 * A subtransaction that rolls back may take partitions made in it along:
 * forget the ranges noted (they are looked up again, and counted again).
 */
static void
partcheck_subxact(SubXactEvent event, SubTransactionId sub, SubTransactionId parent, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		ntouched = 0;
}

/* note the partition [lo, hi) as written to; false when the cap is reached */
static bool
touch(IotPartCheck *pc, TimestampTz lo, TimestampTz hi)
{
	if (ntouched >= IOTPIPE_PARTITION_MAX_TOUCHED)
		return false;
	touched[ntouched].lo = lo;
	touched[ntouched].hi = hi;
	pc->last = ntouched++;
	return true;
}

static char *
touched_reason(TimestampTz t)
{
	return psprintf("held: this transaction writes into %d partitions of iotpipe.readings already, "
					"the most it may (the reading is for %s); the launcher ingests this reading again",
					IOTPIPE_PARTITION_MAX_TOUCHED, day_text(t));
}

/*
 * NULL when a partition takes a reading with ts t (made now if need be),
 * else the reason it is held ("held: ...").
 */
const char *
iotpipe_partcheck(IotPartCheck *pc, TimestampTz t)
{
	TimestampTz lo,
				hi;
	const char *reason;

	/* almost always: the partition of the previous reading */
	if (pc->last >= 0 && pc->last < ntouched &&
		t >= touched[pc->last].lo && t < touched[pc->last].hi)
		return NULL;
	for (int i = 0; i < ntouched; i++)
		if (t >= touched[i].lo && t < touched[i].hi)
		{
			pc->last = i;
			return NULL;
		}
	if (find_segment(pc->parent, t, &lo, &hi))
		return touch(pc, lo, hi) ? NULL : touched_reason(t);
	if (made_in_xact >= IOTPIPE_PARTITION_MAX_NEW)
		return psprintf("held: no partition of iotpipe.readings for %s yet, and this transaction "
						"made the %d new partitions it may; the launcher ingests this reading again",
						day_text(t), IOTPIPE_PARTITION_MAX_NEW);
	if (gave_up_in_xact)
		return psprintf("held: no partition of iotpipe.readings for %s yet, and a lock wait for "
						"making one timed out in this transaction; the launcher ingests this reading again",
						day_text(t));
	if (ntouched >= IOTPIPE_PARTITION_MAX_TOUCHED)
		return touched_reason(t);
	reason = make_for(pc, t);
	if (reason == NULL && find_segment(pc->parent, t, &lo, &hi))
		(void) touch(pc, lo, hi);
	return reason;
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
	if ((int64) to - from + 1 > 366)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many partitions requested: %lld", (long long) to - from + 1),
				 errhint("Create at most a year of daily partitions at once.")));
	/* DateADT counts days since 2000-01-01, like our day numbers */
	PG_RETURN_INT32(iotpipe_create_partitions_range(from, to));
}
