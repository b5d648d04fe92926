/*-------------------------------------------------------------------------
 *
 * etl.c
 *	  The per-reading work of the warehouse ETL.  iotpipe.run_etl()
 *	  (plpgsql, src/sql/50_etl.sql) keeps the lock, the snapshot watermark,
 *	  the dimensions and the upserts; what touches every reading is here,
 *	  in two passes over memory instead of a sort and nine window functions:
 *
 *	  iotpipe._etl_collect(cand, lo, snap, prev, until)
 *	      Runs the candidate query (the raw readings this run takes in)
 *	      into a DestReceiver that files each reading under its sensor: no
 *	      tuple is copied or sorted by the executor.  Returns, per sensor and
 *	      reported location, the count and event-time range: what the SCD2
 *	      dimension step needs.
 *
 *	  iotpipe._etl_emit(full)
 *	      Maps the readings to the dim_sensor version valid at their time;
 *	      on an incremental run adds the facts already loaded in the hours
 *	      around the touched ones; sorts each sensor's readings by (ts,
 *	      ingest_xid, ctid); then per sensor version, in one ordered walk:
 *	      dedup (first ingested wins, copies add up), the hourly statistics,
 *	      the outlier flag (leave-one-out against the hour and its
 *	      neighbours) and the stuck flag (five identical readings within an
 *	      hour).  Writes with multi-inserts: on a full load straight into
 *	      fact_reading and fact_sensor_hourly; on an incremental run new facts
 *	      into fact_reading (indexes maintained), changed facts and the
 *	      refreshed hours into the staging tables the SQL upserts from.
 *
 *	  The two calls share state kept in a memory context of the current
 *	  transaction.  Memory: about 48 bytes per reading in the window;
 *	  run_etl(until) bounds a very large first load.
 *
 *	  The semantics are the warehouse contract in docs/warehouse.md; the
 *	  pg_regress test 50_etl and the rebuild-equality tests hold them.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "ingest.h"

#include <math.h>
#include <stdlib.h>

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "version.h"
#include "nodes/makefuncs.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(iotpipe_etl_collect);
PG_FUNCTION_INFO_V1(iotpipe_etl_emit);

#define FACT_NATTS		12
#define HOURLY_NATTS	20
#define DAYS_NATTS		3

/* EtlRow.flags */
#define ROW_TEMP_NULL	0x01
#define ROW_HUM_NULL	0x02
#define ROW_FACT		0x04	/* a fact already in fact_reading */
#define ROW_F_OUTLIER	0x08	/* its stored flags */
#define ROW_F_STUCK		0x10

/* one raw reading, or one loaded fact (48 bytes) */
typedef struct EtlRow
{
	TimestampTz ts;
	float8		temp;
	float8		hum;
	uint64		xid;			/* ingest_xid */
	uint64		ord;			/* ctid of the raw row; 0 for a fact */
	int32		copies;
	uint8		flags;
} EtlRow;

typedef struct EtlLoc
{
	char	   *loc;			/* NULL: no location reported */
	int			len;
	int64		n;
	TimestampTz min_ts;
	TimestampTz max_ts;
} EtlLoc;

typedef struct EtlVersion
{
	int32		key;
	int32		loc_key;
	TimestampTz from;
	TimestampTz to;
} EtlVersion;

typedef struct EtlSensor
{
	char	   *id;
	int			idlen;
	uint32		hash;
	EtlRow	   *rows;
	int64		nrows;
	int64		cap;
	EtlLoc	   *locs;
	int			nlocs;
	int			loccap;
	int			lastloc;
	EtlVersion *vers;
	int			nvers;
} EtlSensor;

typedef struct EtlState
{
	MemoryContext cxt;
	EtlSensor  *sensors;
	int			nsensors;
	int			cap;
	int		   *slots;			/* open addressing: index + 1, 0 = empty */
	int			nslots;			/* power of two */
	int64		nrows;
	HTAB	   *old_hours;		/* incremental: EtlOldHour by (key, start) */
} EtlState;

/* the state lives in a context of the transaction that made it */
static EtlState *etl_state = NULL;
static LocalTransactionId etl_state_lxid = InvalidLocalTransactionId;

/* one deduplicated reading of a sensor version */
typedef struct EtlFact
{
	int64		row;			/* the winner */
	int64		ctx;			/* the loaded fact with this ts, or -1 */
	int32		copies;
	int32		hour;
	bool		outlier;
	bool		stuck;
} EtlFact;

/* one sensor version and hour */
typedef struct EtlHour
{
	TimestampTz start;
	int64		first;			/* index of its first fact */
	int64		n;
	double		t[3];			/* float8_accum state: N, Sx, Sxx */
	double		h[3];
	double		tmin,
				tmax,
				hmin,
				hmax;
	double		t3[3];			/* n, sum, sum of squares over hour +-1 */
	double		h3[3];
	int32		outliers,
				stuck,
				anomalies,
				duplicates;
	bool		touched;		/* holds a new reading */
	bool		out;			/* written by this run */
} EtlHour;

#define WRITER_BATCH	1000

/* a multi-insert writer into one table */
typedef struct EtlWriter
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	BulkInsertState bis;
	int			options;
	int			ncols;			/* the columns iotpipe writes */
	int			attmap[HOURLY_NATTS];	/* their positions in the table */
	TupleTableSlot *slots[WRITER_BATCH];
	int			nslots;
	int			n;
	int64		written;
} EtlWriter;

/* ------------------------------------------------------------------ state */

static EtlState *
etl_state_get(bool create)
{
	if (etl_state != NULL && etl_state_lxid == MyProc->lxid)
	{
		if (!create)
			return etl_state;
		MemoryContextDelete(etl_state->cxt);
	}
	etl_state = NULL;
	if (!create)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("iotpipe etl: no readings collected in this transaction"),
				 errdetail("iotpipe._etl_emit() needs a preceding iotpipe._etl_collect() in the same transaction."),
				 errhint("Call iotpipe.run_etl().")));
	{
		MemoryContext cxt = AllocSetContextCreate(TopTransactionContext,
												  "iotpipe etl",
												  ALLOCSET_DEFAULT_SIZES);
		EtlState   *st = MemoryContextAllocZero(cxt, sizeof(EtlState));

		st->cxt = cxt;
		st->cap = 256;
		st->sensors = MemoryContextAllocZero(cxt, sizeof(EtlSensor) * st->cap);
		st->nslots = 512;
		st->slots = MemoryContextAllocZero(cxt, sizeof(int) * st->nslots);
		etl_state = st;
		etl_state_lxid = MyProc->lxid;
		return st;
	}
}

static void
etl_state_free(void)
{
	if (etl_state != NULL && etl_state_lxid == MyProc->lxid)
		MemoryContextDelete(etl_state->cxt);
	etl_state = NULL;
}

static EtlSensor *
etl_sensor(EtlState *st, const char *id, int len)
{
	uint32		h = hash_bytes((const unsigned char *) id, len);
	uint32		mask = st->nslots - 1;
	uint32		i = h & mask;
	EtlSensor  *s;

	for (;;)
	{
		int			k = st->slots[i];

		if (k == 0)
			break;
		s = &st->sensors[k - 1];
		if (s->hash == h && s->idlen == len && memcmp(s->id, id, len) == 0)
			return s;
		i = (i + 1) & mask;
	}

	/* new sensor */
	if (st->nsensors == st->cap)
	{
		st->cap *= 2;
		st->sensors = repalloc(st->sensors, sizeof(EtlSensor) * st->cap);
		memset(st->sensors + st->nsensors, 0,
			   sizeof(EtlSensor) * (st->cap - st->nsensors));
	}
	s = &st->sensors[st->nsensors++];
	s->id = MemoryContextAlloc(st->cxt, len + 1);
	memcpy(s->id, id, len);
	s->id[len] = '\0';
	s->idlen = len;
	s->hash = h;
	s->cap = 64;
	s->rows = MemoryContextAlloc(st->cxt, sizeof(EtlRow) * s->cap);
	s->loccap = 2;
	s->locs = MemoryContextAllocZero(st->cxt, sizeof(EtlLoc) * s->loccap);
	s->lastloc = -1;
	st->slots[i] = st->nsensors;

	/* keep the table at most half full */
	if (st->nsensors * 2 > st->nslots)
	{
		int			nslots = st->nslots * 2;
		int		   *slots = MemoryContextAllocZero(st->cxt, sizeof(int) * nslots);

		for (int k = 0; k < st->nsensors; k++)
		{
			uint32		j = st->sensors[k].hash & (nslots - 1);

			while (slots[j] != 0)
				j = (j + 1) & (nslots - 1);
			slots[j] = k + 1;
		}
		pfree(st->slots);
		st->slots = slots;
		st->nslots = nslots;
	}
	return s;
}

static EtlRow *
etl_add_row(EtlState *st, EtlSensor *s)
{
	if (s->nrows == s->cap)
	{
		s->cap *= 2;
		s->rows = repalloc_huge(s->rows, sizeof(EtlRow) * s->cap);
	}
	st->nrows++;
	return &s->rows[s->nrows++];
}

static void
etl_note_location(EtlState *st, EtlSensor *s, const char *loc, int len, TimestampTz ts)
{
	EtlLoc	   *l = NULL;

	if (s->lastloc >= 0)
	{
		EtlLoc	   *c = &s->locs[s->lastloc];

		if ((loc == NULL) ? c->loc == NULL :
			(c->loc != NULL && c->len == len && memcmp(c->loc, loc, len) == 0))
			l = c;
	}
	if (l == NULL)
	{
		for (int i = 0; i < s->nlocs; i++)
		{
			EtlLoc	   *c = &s->locs[i];

			if ((loc == NULL) ? c->loc == NULL :
				(c->loc != NULL && c->len == len && memcmp(c->loc, loc, len) == 0))
			{
				l = c;
				s->lastloc = i;
				break;
			}
		}
	}
	if (l == NULL)
	{
		if (s->nlocs == s->loccap)
		{
			s->loccap *= 2;
			s->locs = repalloc(s->locs, sizeof(EtlLoc) * s->loccap);
		}
		l = &s->locs[s->nlocs];
		memset(l, 0, sizeof(EtlLoc));
		if (loc != NULL)
		{
			l->loc = MemoryContextAlloc(st->cxt, len + 1);
			memcpy(l->loc, loc, len);
			l->loc[len] = '\0';
			l->len = len;
		}
		l->min_ts = ts;
		l->max_ts = ts;
		s->lastloc = s->nlocs++;
	}
	l->n++;
	if (ts < l->min_ts)
		l->min_ts = ts;
	if (ts > l->max_ts)
		l->max_ts = ts;
}

/* ------------------------------------------------------------- receivers */

typedef enum EtlRecvMode
{
	RECV_CAND,					/* raw candidate readings */
	RECV_FACTS,					/* loaded facts around the touched hours */
	RECV_HOURS					/* loaded hourly rows around them */
} EtlRecvMode;

typedef struct EtlReceiver
{
	DestReceiver pub;
	EtlState   *st;
	EtlRecvMode mode;
	HTAB	   *bykey;			/* facts: sensor_key -> sensor */
} EtlReceiver;

/* an hourly row already in fact_sensor_hourly (every column is by value) */
typedef struct EtlHourKey
{
	int32		key;
	TimestampTz start;
} EtlHourKey;

typedef struct EtlOldHour
{
	EtlHourKey	k;
	Datum		vals[HOURLY_NATTS];
	bool		nulls[HOURLY_NATTS];
} EtlOldHour;

typedef struct EtlKeyEntry
{
	int32		key;
	EtlSensor  *sensor;
} EtlKeyEntry;

static const Oid cand_types[] = {TEXTOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, TEXTOID, XID8OID, TIDOID};
static const Oid fact_types[] = {INT4OID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, XID8OID, INT4OID, BOOLOID, BOOLOID};
static const Oid hour_types[HOURLY_NATTS] = {
	INT4OID, TIMESTAMPTZOID, INT4OID, INT2OID, INT4OID, INT4OID,
	INT4OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID,
	INT4OID, FLOAT8OID, FLOAT8OID, FLOAT8OID, FLOAT8OID,
	INT4OID, INT4OID, INT4OID, INT4OID
};

static void
etl_startup(DestReceiver *self, int operation, TupleDesc desc)
{
	EtlReceiver *r = (EtlReceiver *) self;
	const Oid  *want = r->mode == RECV_CAND ? cand_types :
		r->mode == RECV_FACTS ? fact_types : hour_types;
	int			n = r->mode == RECV_CAND ? lengthof(cand_types) :
		r->mode == RECV_FACTS ? lengthof(fact_types) : lengthof(hour_types);

	if (desc->natts != n)
		elog(ERROR, "iotpipe etl: query returns %d columns, expected %d", desc->natts, n);
	for (int i = 0; i < n; i++)
		if (TupleDescAttr(desc, i)->atttypid != want[i])
			elog(ERROR, "iotpipe etl: column %d of the query has type %u, expected %u",
				 i + 1, TupleDescAttr(desc, i)->atttypid, want[i]);
}

static uint64
etl_tid_ord(Datum d)
{
	ItemPointer tid = (ItemPointer) DatumGetPointer(d);

	return ((uint64) ItemPointerGetBlockNumberNoCheck(tid) << 16) |
		ItemPointerGetOffsetNumberNoCheck(tid);
}

/* a new row of s: time and measures from columns 2-4 of either query */
static EtlRow *
etl_new_row(EtlState *st, EtlSensor *s, const Datum *v, const bool *nul, uint8 flags)
{
	EtlRow	   *row = etl_add_row(st, s);

	row->ts = DatumGetTimestampTz(v[1]);
	row->flags = flags;
	row->temp = nul[2] ? 0 : DatumGetFloat8(v[2]);
	if (nul[2])
		row->flags |= ROW_TEMP_NULL;
	row->hum = nul[3] ? 0 : DatumGetFloat8(v[3]);
	if (nul[3])
		row->flags |= ROW_HUM_NULL;
	return row;
}

static bool
etl_receive(TupleTableSlot *slot, DestReceiver *self)
{
	EtlReceiver *r = (EtlReceiver *) self;
	EtlState   *st = r->st;
	Datum	   *v;
	bool	   *nul;
	EtlSensor  *s;
	EtlRow	   *row;

	slot_getallattrs(slot);
	v = slot->tts_values;
	nul = slot->tts_isnull;

	if (r->mode == RECV_HOURS)
	{
		EtlHourKey	k;
		EtlOldHour *o;

		memset(&k, 0, sizeof(k));
		k.key = DatumGetInt32(v[0]);
		k.start = DatumGetTimestampTz(v[1]);
		o = hash_search(st->old_hours, &k, HASH_ENTER, NULL);
		memcpy(o->vals, v, sizeof(Datum) * HOURLY_NATTS);
		memcpy(o->nulls, nul, sizeof(bool) * HOURLY_NATTS);
		return true;
	}
	if (r->mode == RECV_CAND)
	{
		text	   *id;
		text	   *loc = NULL;

		if (nul[0] || nul[1] || nul[5] || nul[6])
			elog(ERROR, "iotpipe etl: a candidate reading has a NULL key column");
		id = (text *) pg_detoast_datum_packed((struct varlena *) DatumGetPointer(v[0]));
		s = etl_sensor(st, VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id));
		row = etl_new_row(st, s, v, nul, 0);
		row->xid = U64FromFullTransactionId(DatumGetFullTransactionId(v[5]));
		row->ord = etl_tid_ord(v[6]);
		row->copies = 1;
		if (!nul[4])
			loc = (text *) pg_detoast_datum_packed((struct varlena *) DatumGetPointer(v[4]));
		etl_note_location(st, s, loc ? VARDATA_ANY(loc) : NULL,
						  loc ? VARSIZE_ANY_EXHDR(loc) : 0, row->ts);
	}
	else
	{
		int32		key = DatumGetInt32(v[0]);
		EtlKeyEntry *e = hash_search(r->bykey, &key, HASH_FIND, NULL);

		if (e == NULL)
			elog(ERROR, "iotpipe etl: loaded fact of unknown sensor_key %d", key);
		s = e->sensor;
		row = etl_new_row(st, s, v, nul, ROW_FACT);
		row->xid = U64FromFullTransactionId(DatumGetFullTransactionId(v[4]));
		row->ord = 0;
		row->copies = DatumGetInt32(v[5]);
		if (DatumGetBool(v[6]))
			row->flags |= ROW_F_OUTLIER;
		if (DatumGetBool(v[7]))
			row->flags |= ROW_F_STUCK;
	}
	return true;
}

static void
etl_shutdown(DestReceiver *self)
{
}

static void
etl_destroy(DestReceiver *self)
{
}

static void
etl_run_query(EtlReceiver *r, const char *sql, int nargs, Oid *types, Datum *values,
			  bool *nulls)
{
	SPIPlanPtr	plan;
	ParamListInfo params = makeParamList(nargs);
	SPIExecuteOptions opts;
	int			rc;

	r->pub.receiveSlot = etl_receive;
	r->pub.rStartup = etl_startup;
	r->pub.rShutdown = etl_shutdown;
	r->pub.rDestroy = etl_destroy;
	r->pub.mydest = DestNone;

	plan = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_PARALLEL_OK);
	if (plan == NULL)
		elog(ERROR, "iotpipe etl: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	for (int i = 0; i < nargs; i++)
	{
		params->params[i].value = values[i];
		params->params[i].isnull = nulls[i];
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].ptype = types[i];
	}
	memset(&opts, 0, sizeof(opts));
	opts.params = params;
	opts.read_only = true;
	opts.dest = (DestReceiver *) r;
	rc = SPI_execute_plan_extended(plan, &opts);
	/* a SELECT into a receiver other than SPI's reports SPI_OK_UTILITY */
	if (rc != SPI_OK_SELECT && rc != SPI_OK_UTILITY)
		elog(ERROR, "iotpipe etl: query failed: %s", SPI_result_code_string(rc));
	SPI_freeplan(plan);
}

/* ---------------------------------------------------------- _etl_collect */

/*
 * iotpipe._etl_collect(cand text, lo bigint, snap pg_snapshot,
 *                      prev pg_snapshot, until timestamptz)
 *   RETURNS TABLE (sensor_id text, location text, n bigint,
 *                  min_ts timestamptz, max_ts timestamptz)
 */
Datum
iotpipe_etl_collect(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *sql;
	Oid			types[4] = {INT8OID, PG_SNAPSHOTOID, PG_SNAPSHOTOID, TIMESTAMPTZOID};
	Datum		values[4];
	bool		nulls[4];
	EtlState   *st;
	EtlReceiver r;

	iotpipe_require_version();

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("iotpipe etl: the candidate query must not be null")));
	sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	for (int i = 0; i < 4; i++)
	{
		nulls[i] = PG_ARGISNULL(i + 1);
		values[i] = nulls[i] ? (Datum) 0 : PG_GETARG_DATUM(i + 1);
	}

	InitMaterializedSRF(fcinfo, 0);

	st = etl_state_get(true);
	memset(&r, 0, sizeof(r));
	r.st = st;
	r.mode = RECV_CAND;

	SPI_connect();
	etl_run_query(&r, sql, 4, types, values, nulls);
	SPI_finish();

	for (int i = 0; i < st->nsensors; i++)
	{
		EtlSensor  *s = &st->sensors[i];

		for (int j = 0; j < s->nlocs; j++)
		{
			EtlLoc	   *l = &s->locs[j];
			Datum		out[5];
			bool		onull[5] = {false, false, false, false, false};

			out[0] = PointerGetDatum(cstring_to_text_with_len(s->id, s->idlen));
			if (l->loc)
				out[1] = PointerGetDatum(cstring_to_text_with_len(l->loc, l->len));
			else
				onull[1] = true;
			out[2] = Int64GetDatum(l->n);
			out[3] = TimestampTzGetDatum(l->min_ts);
			out[4] = TimestampTzGetDatum(l->max_ts);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, onull);
		}
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------- writer */

typedef struct EtlColumn
{
	const char *name;
	Oid			type;
} EtlColumn;

static const EtlColumn fact_columns[FACT_NATTS] = {
	{"sensor_key", INT4OID}, {"ts", TIMESTAMPTZOID}, {"date_key", INT4OID},
	{"time_key", INT2OID}, {"location_key", INT4OID}, {"temperature", FLOAT8OID},
	{"humidity", FLOAT8OID}, {"copies", INT4OID}, {"is_duplicate", BOOLOID},
	{"is_outlier", BOOLOID}, {"is_stuck", BOOLOID}, {"ingest_xid", XID8OID}
};

static const EtlColumn hourly_columns[HOURLY_NATTS] = {
	{"sensor_key", INT4OID}, {"hour_start", TIMESTAMPTZOID}, {"date_key", INT4OID},
	{"hour", INT2OID}, {"location_key", INT4OID}, {"readings", INT4OID},
	{"temperature_n", INT4OID}, {"temperature_avg", FLOAT8OID},
	{"temperature_min", FLOAT8OID}, {"temperature_max", FLOAT8OID},
	{"temperature_stddev", FLOAT8OID}, {"humidity_n", INT4OID},
	{"humidity_avg", FLOAT8OID}, {"humidity_min", FLOAT8OID},
	{"humidity_max", FLOAT8OID}, {"humidity_stddev", FLOAT8OID},
	{"anomalies", INT4OID}, {"outliers", INT4OID}, {"stuck", INT4OID},
	{"duplicates", INT4OID}
};

static const EtlColumn days_columns[DAYS_NATTS] = {
	{"sensor_key", INT4OID}, {"date_key", INT4OID}, {"day_start", TIMESTAMPTZOID}
};

static void
etl_writer_open(EtlWriter *w, const char *schema, const char *table,
				const EtlColumn *cols, int ncols)
{
	Oid			relid = get_relname_relid(table, get_namespace_oid(schema, false));
	TupleDesc	desc;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" does not exist", schema, table),
				 errhint("Reinstall the iotpipe extension.")));
	memset(w, 0, sizeof(*w));
	w->rel = table_open(relid, RowExclusiveLock);
	desc = RelationGetDescr(w->rel);
	w->ncols = ncols;

	/*
	 * Match the columns by name and type; dropped columns are skipped (left
	 * NULL), any other column is an error: these rows bypass the executor,
	 * so there is nobody to compute a default or check a constraint.
	 */
	for (int i = 0; i < ncols; i++)
		w->attmap[i] = -1;
	for (int j = 0; j < desc->natts; j++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, j);
		int			i;

		if (a->attisdropped)
			continue;
		for (i = 0; i < ncols; i++)
			if (strcmp(NameStr(a->attname), cols[i].name) == 0)
				break;
		if (i == ncols || a->atttypid != cols[i].type)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s.%s does not have the columns iotpipe expects", schema, table),
					 i == ncols ?
					 errdetail("Column \"%s\" is not one of iotpipe's.", NameStr(a->attname)) :
					 errdetail("Column \"%s\" should be of type %s.", cols[i].name,
							   format_type_be(cols[i].type)),
					 errhint("Do not alter iotpipe's warehouse tables; create views or other tables instead.")));
		w->attmap[i] = j;
	}
	for (int i = 0; i < ncols; i++)
		if (w->attmap[i] < 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s.%s does not have the columns iotpipe expects", schema, table),
					 errdetail("Column \"%s\" is missing.", cols[i].name),
					 errhint("Reinstall the iotpipe extension, or run iotpipe.reset_warehouse() after restoring the column.")));

	w->estate = CreateExecutorState();
	w->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(w->rri, w->rel, 1, NULL, 0);
	ExecOpenIndices(w->rri, false);
	w->bis = GetBulkInsertState();
	w->options = 0;

	/*
	 * A table emptied by TRUNCATE in this very subtransaction (a full load):
	 * nothing else can see its new file before we commit, so the rows go in
	 * frozen, pages all-visible, as COPY FREEZE writes them.  Analysts'
	 * first queries then do not rewrite every page to set hint bits.
	 */
	if (w->rel->rd_newRelfilenodeSubid == GetCurrentSubTransactionId() ||
		w->rel->rd_createSubid == GetCurrentSubTransactionId())
		w->options |= TABLE_INSERT_SKIP_FSM | TABLE_INSERT_FROZEN;
	w->nslots = WRITER_BATCH;
	for (int i = 0; i < w->nslots; i++)
		w->slots[i] = table_slot_create(w->rel, NULL);
}

static void
etl_writer_flush(EtlWriter *w)
{
	iotpipe_multi_insert(w->rri, w->estate, w->slots, w->n, w->options, w->bis);
	w->written += w->n;
	w->n = 0;
}

/* add one row, its columns in the order of the writer's column list */
static void
etl_writer_put(EtlWriter *w, const Datum *val, const bool *nul)
{
	TupleTableSlot *slot;
	int			natts;

	if (w->n == w->nslots)
		etl_writer_flush(w);
	slot = w->slots[w->n++];
	ExecClearTuple(slot);
	natts = slot->tts_tupleDescriptor->natts;
	if (natts != w->ncols)
		for (int j = 0; j < natts; j++)
			slot->tts_isnull[j] = true; /* dropped columns */
	for (int i = 0; i < w->ncols; i++)
	{
		slot->tts_values[w->attmap[i]] = val[i];
		slot->tts_isnull[w->attmap[i]] = nul[i];
	}
	ExecStoreVirtualTuple(slot);
}

static int64
etl_writer_close(EtlWriter *w)
{
	etl_writer_flush(w);
	table_finish_bulk_insert(w->rel, w->options);
	FreeBulkInsertState(w->bis);
	for (int i = 0; i < w->nslots; i++)
		ExecDropSingleTupleTableSlot(w->slots[i]);
	ExecCloseIndices(w->rri);
	FreeExecutorState(w->estate);
	table_close(w->rel, NoLock);
	return w->written;
}

/* ------------------------------------------------------------ the transform */

static int
etl_row_cmp(const void *a, const void *b)
{
	const EtlRow *x = a;
	const EtlRow *y = b;

	if (x->ts != y->ts)
		return x->ts < y->ts ? -1 : 1;
	if (x->xid != y->xid)
		return x->xid < y->xid ? -1 : 1;
	if (x->ord != y->ord)
		return x->ord < y->ord ? -1 : 1;
	return 0;
}

static inline TimestampTz
etl_hour_of(TimestampTz ts)
{
	TimestampTz r = ts % USECS_PER_HOUR;

	if (r < 0)
		r += USECS_PER_HOUR;
	return ts - r;
}

/* yyyymmdd and the UTC hour/minute of a timestamp */
static void
etl_date_parts(TimestampTz ts, int32 *date_key, int *minute_of_day)
{
	int64		days = ts / USECS_PER_DAY;
	int64		rem = ts % USECS_PER_DAY;
	int			y,
				m,
				d;

	if (rem < 0)
	{
		rem += USECS_PER_DAY;
		days--;
	}
	j2date((int) (days + POSTGRES_EPOCH_JDATE), &y, &m, &d);
	*date_key = y * 10000 + m * 100 + d;
	*minute_of_day = (int) (rem / USECS_PER_MINUTE);
}

/* float8_accum(), as avg() and stddev_samp() compute */
static inline void
etl_accum(double *s, double x)
{
	double		n = s[0] + 1.0;
	double		sx = s[1] + x;

	if (s[0] > 0.0)
	{
		double		tmp = x * n - sx;

		s[2] += tmp * tmp / (n * s[0]);
	}
	else
		s[2] = 0.0;
	s[0] = n;
	s[1] = sx;
}

/*
 * Leave-one-out outlier test: x against the mean and standard deviation of
 * the other readings of its hour and the two neighbouring hours, from their
 * count n, sum s and sum of squares q (x included).  Needs 5 other readings;
 * the deviation must exceed 4 standard deviations, with a floor of 0.1 on
 * the standard deviation (flat lines).  docs/warehouse.md, "is_outlier".
 */
static inline bool
etl_outlier(double x, const double *s3)
{
	double		n = s3[0];
	double		s = s3[1];
	double		q = s3[2];
	double		mean,
				var;

	if (n < 6)
		return false;
	mean = (s - x) / (n - 1);
	var = (q - x * x - (s - x) * (s - x) / (n - 1)) / (n - 2);
	if (var < 0)
		var = 0;
	return fabs(x - mean) > 4 * Max(sqrt(var), 0.1);
}

/*
 * float8 order as PostgreSQL defines it (float8_cmp_internal): NaN equals
 * NaN and sorts above every other value.  The contract rejects NaN and
 * infinities, but rows inserted into iotpipe.readings by hand may hold them.
 */
static inline int
etl_fcmp(double a, double b)
{
	if (unlikely(isnan(a) || isnan(b)))
		return isnan(a) ? (isnan(b) ? 0 : 1) : -1;
	return (a > b) - (a < b);
}

/* one value of a measure into an hour: min, max and the accumulator */
static inline void
etl_measure(double *acc, double *min, double *max, double x)
{
	if (acc[0] == 0 || etl_fcmp(x, *min) < 0)
		*min = x;
	if (acc[0] == 0 || etl_fcmp(x, *max) > 0)
		*max = x;
	etl_accum(acc, x);
}

static inline bool
etl_same_values(const EtlRow *a, const EtlRow *b)
{
	if ((a->flags & ROW_TEMP_NULL) != (b->flags & ROW_TEMP_NULL) ||
		(a->flags & ROW_HUM_NULL) != (b->flags & ROW_HUM_NULL))
		return false;
	if (!(a->flags & ROW_TEMP_NULL) && etl_fcmp(a->temp, b->temp) != 0)
		return false;
	if (!(a->flags & ROW_HUM_NULL) && etl_fcmp(a->hum, b->hum) != 0)
		return false;
	return true;
}

typedef struct EtlEmit
{
	bool		full;
	EtlWriter	facts;			/* fact_reading */
	EtlWriter	changed;		/* etl_stage_facts (incremental) */
	EtlWriter	hourly;			/* fact_sensor_hourly */
	EtlWriter	hours_changed;	/* etl_stage_hourly (incremental) */
	EtlWriter	days;			/* etl_stage_days (incremental) */
	HTAB	   *old_hours;		/* incremental: the hourly rows loaded */
	int32		last_day_key;	/* the last (sensor_key, date_key) staged */
	int32		last_day;
	EtlFact    *f;
	int64		fcap;
	EtlHour    *h;
	int64		hcap;
	int64		facts_new;
	int64		facts_changed;
	int64		hours;
	int64		ndays;
} EtlEmit;

static void
etl_put_fact(EtlEmit *e, EtlWriter *w, const EtlVersion *v, const EtlRow *row,
			 const EtlFact *f)
{
	Datum		val[FACT_NATTS];
	bool		nul[FACT_NATTS];
	int32		date_key;
	int			minute;

	etl_date_parts(row->ts, &date_key, &minute);
	memset(nul, 0, sizeof(nul));
	val[0] = Int32GetDatum(v->key);
	val[1] = TimestampTzGetDatum(row->ts);
	val[2] = Int32GetDatum(date_key);
	val[3] = Int16GetDatum((int16) minute);
	val[4] = Int32GetDatum(v->loc_key);
	val[5] = Float8GetDatum(row->temp);
	nul[5] = (row->flags & ROW_TEMP_NULL) != 0;
	val[6] = Float8GetDatum(row->hum);
	nul[6] = (row->flags & ROW_HUM_NULL) != 0;
	val[7] = Int32GetDatum(f->copies);
	val[8] = BoolGetDatum(f->copies > 1);
	val[9] = BoolGetDatum(f->outlier);
	val[10] = BoolGetDatum(f->stuck);
	val[11] = FullTransactionIdGetDatum(FullTransactionIdFromU64(row->xid));
	etl_writer_put(w, val, nul);
}

static void
etl_put_hour(EtlEmit *e, const EtlVersion *v, const EtlHour *h)
{
	Datum		val[HOURLY_NATTS];
	bool		nul[HOURLY_NATTS];
	int32		date_key;
	int			minute;
	EtlWriter  *w = &e->hourly;

	etl_date_parts(h->start, &date_key, &minute);
	memset(nul, 0, sizeof(nul));
	val[0] = Int32GetDatum(v->key);
	val[1] = TimestampTzGetDatum(h->start);
	val[2] = Int32GetDatum(date_key);
	val[3] = Int16GetDatum((int16) (minute / 60));
	val[4] = Int32GetDatum(v->loc_key);
	val[5] = Int32GetDatum((int32) h->n);
	for (int m = 0; m < 2; m++)
	{
		const double *a = m == 0 ? h->t : h->h;
		int			base = m == 0 ? 6 : 11;

		val[base] = Int32GetDatum((int32) a[0]);
		if (a[0] > 0)
		{
			val[base + 1] = Float8GetDatum(a[1] / a[0]);
			val[base + 2] = Float8GetDatum(m == 0 ? h->tmin : h->hmin);
			val[base + 3] = Float8GetDatum(m == 0 ? h->tmax : h->hmax);
		}
		else
		{
			val[base + 1] = val[base + 2] = val[base + 3] = (Datum) 0;
			nul[base + 1] = nul[base + 2] = nul[base + 3] = true;
		}
		if (a[0] > 1)
			val[base + 4] = Float8GetDatum(a[2] > 0 ? sqrt(a[2] / (a[0] - 1.0)) : 0.0);
		else
		{
			val[base + 4] = (Datum) 0;
			nul[base + 4] = true;
		}
	}
	val[16] = Int32GetDatum(h->anomalies);
	val[17] = Int32GetDatum(h->outliers);
	val[18] = Int32GetDatum(h->stuck);
	val[19] = Int32GetDatum(h->duplicates);

	if (!e->full && e->old_hours != NULL)
	{
		EtlHourKey	k;
		EtlOldHour *o;

		memset(&k, 0, sizeof(k));
		k.key = v->key;
		k.start = h->start;
		o = hash_search(e->old_hours, &k, HASH_FIND, NULL);
		if (o != NULL)
		{
			bool		same = true;

			/* as the upsert's IS DISTINCT FROM (all columns are by value) */
			for (int i = 0; i < HOURLY_NATTS && same; i++)
				same = o->nulls[i] == nul[i] && (nul[i] || o->vals[i] == val[i]);
			if (same)
				return;
			w = &e->hours_changed;
		}
	}
	etl_writer_put(w, val, nul);
	e->hours++;

	/* the days whose roll-up this changes */
	if (!e->full && (e->ndays == 0 || e->last_day_key != v->key || e->last_day != date_key))
	{
		Datum		dval[DAYS_NATTS];
		bool		dnul[DAYS_NATTS] = {false, false, false};

		dval[0] = Int32GetDatum(v->key);
		dval[1] = Int32GetDatum(date_key);
		dval[2] = TimestampTzGetDatum(h->start - (TimestampTz) (minute / 60) * USECS_PER_HOUR);
		etl_writer_put(&e->days, dval, dnul);
		e->last_day_key = v->key;
		e->last_day = date_key;
		e->ndays++;
	}
}

/* one sensor version: rows[lo, hi) sorted by (ts, xid, ord) */
static void
etl_segment(EtlEmit *e, const EtlVersion *v, EtlRow *rows, int64 lo, int64 hi)
{
	int64		nf = 0,
				nh = 0;
	EtlFact    *f;
	EtlHour    *h;

	if (hi - lo > e->fcap)
	{
		e->fcap = Max(hi - lo, e->fcap * 2);
		e->f = repalloc_huge(e->f, sizeof(EtlFact) * e->fcap);
	}
	f = e->f;
	h = e->h;

	/* dedup: the first in sort order wins, copies add up; and the hours */
	for (int64 i = lo; i < hi; i++)
	{
		EtlRow	   *r = &rows[i];

		if (nf > 0 && rows[f[nf - 1].row].ts == r->ts)
		{
			EtlFact    *cur = &f[nf - 1];

			cur->copies += r->copies;
			if (r->flags & ROW_FACT)
				cur->ctx = i;
			else
				h[cur->hour].touched = true;
			continue;
		}
		else
		{
			TimestampTz hs = etl_hour_of(r->ts);
			EtlFact    *cur = &f[nf];

			if (nh == 0 || h[nh - 1].start != hs)
			{
				EtlHour    *nhour;

				/* hours are far fewer than readings: grow as they come */
				if (nh == e->hcap)
				{
					e->hcap *= 2;
					e->h = repalloc_huge(e->h, sizeof(EtlHour) * e->hcap);
					h = e->h;
				}
				nhour = &h[nh++];

				memset(nhour, 0, sizeof(EtlHour));
				nhour->start = hs;
				nhour->first = nf;
			}
			cur->row = i;
			cur->ctx = (r->flags & ROW_FACT) ? i : -1;
			cur->copies = r->copies;
			cur->hour = nh - 1;
			cur->outlier = cur->stuck = false;
			if (!(r->flags & ROW_FACT))
				h[nh - 1].touched = true;
			h[nh - 1].n++;
			nf++;
		}
	}

	/* hourly statistics of the deduplicated readings */
	for (int64 j = 0; j < nh; j++)
	{
		EtlHour    *hr = &h[j];

		for (int64 k = hr->first; k < hr->first + hr->n; k++)
		{
			EtlRow	   *r = &rows[f[k].row];

			if (!(r->flags & ROW_TEMP_NULL))
				etl_measure(hr->t, &hr->tmin, &hr->tmax, r->temp);
			if (!(r->flags & ROW_HUM_NULL))
				etl_measure(hr->h, &hr->hmin, &hr->hmax, r->hum);
		}
	}

	/* n, sum and sum of squares over the hour and its neighbours */
	for (int64 j = 0; j < nh; j++)
	{
		memset(h[j].t3, 0, sizeof(h[j].t3));
		memset(h[j].h3, 0, sizeof(h[j].h3));
		for (int64 o = j - 1; o <= j + 1; o++)
		{
			if (o < 0 || o >= nh || llabs(h[o].start - h[j].start) > USECS_PER_HOUR)
				continue;
			h[j].t3[0] += h[o].t[0];
			h[j].t3[1] += h[o].t[1];
			h[j].t3[2] += h[o].t[2] + (h[o].t[0] > 0 ? h[o].t[1] * h[o].t[1] / h[o].t[0] : 0);
			h[j].h3[0] += h[o].h[0];
			h[j].h3[1] += h[o].h[1];
			h[j].h3[2] += h[o].h[2] + (h[o].h[0] > 0 ? h[o].h[1] * h[o].h[1] / h[o].h[0] : 0);
		}
	}

	/* flags, and which hours this run writes */
	for (int64 j = 0; j < nh; j++)
	{
		h[j].out = e->full || h[j].touched ||
			(j > 0 && h[j - 1].touched && h[j].start - h[j - 1].start == USECS_PER_HOUR) ||
			(j + 1 < nh && h[j + 1].touched && h[j + 1].start - h[j].start == USECS_PER_HOUR);
	}
	for (int64 k = 0; k < nf; k++)
	{
		EtlFact    *cur = &f[k];
		EtlRow	   *r = &rows[cur->row];
		EtlHour    *hr = &h[cur->hour];

		if (!hr->out)
			continue;
		cur->outlier = (!(r->flags & ROW_TEMP_NULL) && etl_outlier(r->temp, hr->t3)) ||
			(!(r->flags & ROW_HUM_NULL) && etl_outlier(r->hum, hr->h3));
		if (k >= 4 && rows[f[k - 4].row].ts >= r->ts - USECS_PER_HOUR)
		{
			cur->stuck = true;
			for (int b = 1; b <= 4 && cur->stuck; b++)
				cur->stuck = etl_same_values(r, &rows[f[k - b].row]);
		}
		if (cur->outlier || cur->stuck)
			hr->anomalies++;
		if (cur->outlier)
			hr->outliers++;
		if (cur->stuck)
			hr->stuck++;
		if (cur->copies > 1)
			hr->duplicates++;
	}

	/* write */
	for (int64 j = 0; j < nh; j++)
	{
		EtlHour    *hr = &h[j];

		if (!hr->out)
			continue;
		for (int64 k = hr->first; k < hr->first + hr->n; k++)
		{
			EtlFact    *cur = &f[k];
			EtlRow	   *r = &rows[cur->row];

			if (cur->ctx < 0)
			{
				etl_put_fact(e, &e->facts, v, r, cur);
				e->facts_new++;
			}
			else
			{
				EtlRow	   *old = &rows[cur->ctx];

				/* as the upsert's IS DISTINCT FROM: winner, values, copies, flags */
				if (!etl_same_values(old, r) || old->xid != r->xid ||
					old->copies != cur->copies ||
					((old->flags & ROW_F_OUTLIER) != 0) != cur->outlier ||
					((old->flags & ROW_F_STUCK) != 0) != cur->stuck)
				{
					etl_put_fact(e, &e->changed, v, r, cur);
					e->facts_changed++;
				}
			}
		}
		etl_put_hour(e, v, hr);
	}
}

static void
etl_load_versions(EtlState *st)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(st->nsensors, 1));
	ArrayType  *arr;
	Oid			types[1] = {TEXTARRAYOID};
	Datum		vals[1];
	int			rc;

	for (int i = 0; i < st->nsensors; i++)
		ids[i] = PointerGetDatum(cstring_to_text_with_len(st->sensors[i].id,
														  st->sensors[i].idlen));
	arr = construct_array(ids, st->nsensors, TEXTOID, -1, false, TYPALIGN_INT);
	vals[0] = PointerGetDatum(arr);
	rc = SPI_execute_with_args(
							   "SELECT d.sensor_id, d.sensor_key, d.location_key, d.valid_from, d.valid_to"
							   "  FROM iotpipe_dw.dim_sensor d"
							   " WHERE d.sensor_id = ANY ($1)"
							   " ORDER BY d.sensor_id, d.valid_from",
							   1, types, vals, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "iotpipe etl: reading dim_sensor failed: %s", SPI_result_code_string(rc));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *id = DatumGetTextPP(SPI_getbinval(tup, desc, 1, &isnull));
		EtlSensor  *s = etl_sensor(st, VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id));
		EtlVersion *v;

		if (s->vers == NULL)
			s->vers = MemoryContextAlloc(st->cxt, sizeof(EtlVersion) * 4);
		else if ((s->nvers & (s->nvers - 1)) == 0 && s->nvers >= 4)
			s->vers = repalloc(s->vers, sizeof(EtlVersion) * s->nvers * 2);
		v = &s->vers[s->nvers++];
		v->key = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		v->loc_key = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		v->from = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		v->to = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
}

/* the version of s valid at ts, searching forward from *v */
static inline int
etl_version_at(EtlSensor *s, int v, TimestampTz ts)
{
	while (v < s->nvers && ts >= s->vers[v].to)
		v++;
	if (v >= s->nvers || ts < s->vers[v].from)
		elog(ERROR, "iotpipe etl: no dim_sensor version of \"%s\" covers %s",
			 s->id, timestamptz_to_str(ts));
	return v;
}

/* (sensor_key, from, to) ranges for the context queries */
typedef struct EtlRanges
{
	Datum	   *keys;
	Datum	   *los;
	Datum	   *his;
	int			n;
	int			cap;
} EtlRanges;

static void
etl_add_range(EtlRanges *r, int32 key, TimestampTz lo, TimestampTz hi)
{
	if (r->n == r->cap)
	{
		r->cap = r->cap ? r->cap * 2 : 1024;
		r->keys = r->keys ? repalloc(r->keys, sizeof(Datum) * r->cap) : palloc(sizeof(Datum) * r->cap);
		r->los = r->los ? repalloc(r->los, sizeof(Datum) * r->cap) : palloc(sizeof(Datum) * r->cap);
		r->his = r->his ? repalloc(r->his, sizeof(Datum) * r->cap) : palloc(sizeof(Datum) * r->cap);
	}
	r->keys[r->n] = Int32GetDatum(key);
	r->los[r->n] = TimestampTzGetDatum(lo);
	r->his[r->n] = TimestampTzGetDatum(hi);
	r->n++;
}

/*
 * Incremental: the facts already loaded two hours around every hour a new
 * reading touches (the hours +-1 are rewritten; their flags need the hours
 * next to them), read through the primary key.
 */
static void
etl_load_context(EtlState *st)
{
	EtlRanges	ranges = {0};
	HASHCTL		ctl;
	HTAB	   *bykey;
	EtlReceiver r;
	Oid			types[3] = {INT4ARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		vals[3];
	bool		nulls[3] = {false, false, false};

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(EtlKeyEntry);
	ctl.hcxt = CurrentMemoryContext;
	bykey = hash_create("iotpipe etl sensor keys", 1024, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	for (int i = 0; i < st->nsensors; i++)
	{
		EtlSensor  *s = &st->sensors[i];
		int			v = 0;
		TimestampTz rlo = 0,
					rhi = 0;
		int32		rkey = 0;
		bool		open = false;

		for (int j = 0; j < s->nvers; j++)
		{
			bool		found;
			EtlKeyEntry *ke = hash_search(bykey, &s->vers[j].key, HASH_ENTER, &found);

			ke->sensor = s;
		}
		/* rows are sorted by ts: ranges come in order, merge overlaps */
		for (int64 k = 0; k < s->nrows; k++)
		{
			TimestampTz hs = etl_hour_of(s->rows[k].ts);
			TimestampTz lo = hs - 2 * USECS_PER_HOUR;
			TimestampTz hi = hs + 3 * USECS_PER_HOUR;

			v = etl_version_at(s, v, s->rows[k].ts);
			if (open && rkey == s->vers[v].key && lo <= rhi)
			{
				if (hi > rhi)
					rhi = hi;
				continue;
			}
			if (open)
				etl_add_range(&ranges, rkey, rlo, rhi);
			open = true;
			rkey = s->vers[v].key;
			rlo = lo;
			rhi = hi;
		}
		if (open)
			etl_add_range(&ranges, rkey, rlo, rhi);
	}
	if (ranges.n == 0)
		return;

	vals[0] = PointerGetDatum(construct_array(ranges.keys, ranges.n, INT4OID, 4, true,
											  TYPALIGN_INT));
	vals[1] = PointerGetDatum(construct_array(ranges.los, ranges.n, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	vals[2] = PointerGetDatum(construct_array(ranges.his, ranges.n, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	memset(&r, 0, sizeof(r));
	r.st = st;
	r.mode = RECV_FACTS;
	r.bykey = bykey;
	etl_run_query(&r,
				  "SELECT f.sensor_key, f.ts, f.temperature, f.humidity, f.ingest_xid, f.copies,"
				  "       f.is_outlier, f.is_stuck"
				  "  FROM unnest($1, $2, $3) AS c (k, lo, hi)"
				  "  JOIN iotpipe_dw.fact_reading f ON f.sensor_key = c.k AND f.ts >= c.lo AND f.ts < c.hi",
				  3, types, vals, nulls);
	hash_destroy(bykey);

	/* and the hourly rows there, to write only the new and the changed */
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(EtlHourKey);
	ctl.entrysize = sizeof(EtlOldHour);
	ctl.hcxt = st->cxt;
	st->old_hours = hash_create("iotpipe etl hours", 4096, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	r.mode = RECV_HOURS;
	etl_run_query(&r,
				  "SELECT h.* FROM unnest($1, $2, $3) AS c (k, lo, hi)"
				  "  JOIN iotpipe_dw.fact_sensor_hourly h"
				  "    ON h.sensor_key = c.k AND h.hour_start >= c.lo AND h.hour_start < c.hi",
				  3, types, vals, nulls);
}

/*
 * iotpipe._etl_emit(full bool)
 *   RETURNS TABLE (facts_new bigint, facts_changed bigint, hours bigint,
 *                  days bigint)
 */
Datum
iotpipe_etl_emit(PG_FUNCTION_ARGS)
{
	bool		full = PG_GETARG_BOOL(0);
	EtlState   *st = etl_state_get(false);
	EtlEmit		e;
	TupleDesc	tupdesc;
	Datum		out[4];
	bool		onull[4] = {false, false, false, false};
	MemoryContext old;
	TimestampTz t[6];

	iotpipe_require_version();

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "iotpipe etl: return type must be a row type");

	SPI_connect();
	old = MemoryContextSwitchTo(st->cxt);

	t[0] = GetCurrentTimestamp();
	etl_load_versions(st);
	t[1] = GetCurrentTimestamp();
	for (int i = 0; i < st->nsensors; i++)
	{
		EtlSensor  *s = &st->sensors[i];

		CHECK_FOR_INTERRUPTS();
		qsort(s->rows, s->nrows, sizeof(EtlRow), etl_row_cmp);
	}
	t[2] = GetCurrentTimestamp();
	if (!full)
	{
		int64		before = st->nrows;

		etl_load_context(st);
		if (st->nrows > before)
			for (int i = 0; i < st->nsensors; i++)
				qsort(st->sensors[i].rows, st->sensors[i].nrows, sizeof(EtlRow), etl_row_cmp);
	}

	t[3] = GetCurrentTimestamp();
	memset(&e, 0, sizeof(e));
	e.full = full;
	e.fcap = 1024;
	e.f = palloc(sizeof(EtlFact) * e.fcap);
	e.hcap = 1024;
	e.h = palloc(sizeof(EtlHour) * e.hcap);
	e.old_hours = st->old_hours;
	etl_writer_open(&e.facts, "iotpipe_dw", "fact_reading", fact_columns, FACT_NATTS);
	etl_writer_open(&e.hourly, "iotpipe_dw", "fact_sensor_hourly", hourly_columns, HOURLY_NATTS);
	if (!full)
	{
		etl_writer_open(&e.changed, "iotpipe", "etl_stage_facts", fact_columns, FACT_NATTS);
		etl_writer_open(&e.hours_changed, "iotpipe", "etl_stage_hourly", hourly_columns,
						HOURLY_NATTS);
		etl_writer_open(&e.days, "iotpipe", "etl_stage_days", days_columns, DAYS_NATTS);
	}

	for (int i = 0; i < st->nsensors; i++)
	{
		EtlSensor  *s = &st->sensors[i];
		int64		lo = 0;
		int			v = 0;

		CHECK_FOR_INTERRUPTS();
		if (s->nrows == 0)
			continue;
		v = etl_version_at(s, 0, s->rows[0].ts);
		for (int64 k = 1; k <= s->nrows; k++)
		{
			if (k < s->nrows && s->rows[k].ts < s->vers[v].to)
				continue;
			etl_segment(&e, &s->vers[v], s->rows, lo, k);
			lo = k;
			if (k < s->nrows)
				v = etl_version_at(s, v, s->rows[k].ts);
		}
	}

	t[4] = GetCurrentTimestamp();
	etl_writer_close(&e.facts);
	etl_writer_close(&e.hourly);
	if (!full)
	{
		etl_writer_close(&e.changed);
		etl_writer_close(&e.hours_changed);
		etl_writer_close(&e.days);
	}
	t[5] = GetCurrentTimestamp();
	elog(DEBUG1, "iotpipe etl: %ld readings; versions %.1f ms, sort %.1f ms, context %.1f ms, "
		 "transform and write %.1f ms, close %.1f ms",
		 (long) st->nrows, (t[1] - t[0]) / 1000.0, (t[2] - t[1]) / 1000.0,
		 (t[3] - t[2]) / 1000.0, (t[4] - t[3]) / 1000.0, (t[5] - t[4]) / 1000.0);

	MemoryContextSwitchTo(old);
	SPI_finish();
	etl_state_free();
	CommandCounterIncrement();

	out[0] = Int64GetDatum(e.facts_new);
	out[1] = Int64GetDatum(e.facts_changed);
	out[2] = Int64GetDatum(e.hours);
	out[3] = Int64GetDatum(e.ndays);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), out, onull)));
}
