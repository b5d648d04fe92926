/*-------------------------------------------------------------------------
 *
 * etl_collect.c
 *	  The per-reading work of the warehouse ETL, first part: the readings in
 *	  memory.  iotpipe.run_etl() (plpgsql, src/sql/50_etl.sql) keeps the
 *	  lock, the snapshot watermark, the dimensions and the upserts; what
 *	  touches every reading is C, in two passes over memory instead of a
 *	  sort and nine window functions:
 *
 *	  iotpipe._etl_collect(cand, lo, snap, prev, until)  (this file)
 *	      Runs the candidate query (the raw readings this run takes in)
 *	      into a DestReceiver that files each reading under its sensor: no
 *	      tuple is copied or sorted by the executor.  Returns, per sensor and
 *	      reported location, the count and event-time range: what the SCD2
 *	      dimension step needs.
 *
 *	  iotpipe._etl_emit(full)  (etl_write.c, computing with etl_transform.c)
 *	      Transforms the collected readings and writes the warehouse rows.
 *
 *	  The two calls share state kept in a memory context of the current
 *	  transaction (here).  Memory: about 48 bytes per reading in the window;
 *	  run_etl(until) bounds a very large first load.  The same receiver
 *	  reads, on an incremental run, the facts and hourly rows already loaded
 *	  around the touched hours (etl_write.c asks for them).
 *
 *	  The semantics are the warehouse contract in docs/warehouse.md; the
 *	  pg_regress test 50_etl and the rebuild-equality tests hold them.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "etl_collect.h"
#include "version.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(iotpipe_etl_collect);

/* the state lives in a context of the transaction that made it */
static EtlState *etl_state = NULL;
static LocalTransactionId etl_state_lxid = InvalidLocalTransactionId;

/* ------------------------------------------------------------------ state */

EtlState *
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

void
etl_state_free(void)
{
	if (etl_state != NULL && etl_state_lxid == MyProc->lxid)
		MemoryContextDelete(etl_state->cxt);
	etl_state = NULL;
}

EtlSensor *
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

typedef struct EtlReceiver
{
	DestReceiver pub;
	EtlState   *st;
	EtlRecvMode mode;
	HTAB	   *bykey;			/* facts: sensor_key -> sensor */
} EtlReceiver;

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

void
etl_collect_query(EtlState *st, EtlRecvMode mode, HTAB *bykey, const char *sql, int nargs,
				  Oid *types, Datum *values, bool *nulls)
{
	EtlReceiver r;

	memset(&r, 0, sizeof(r));
	r.st = st;
	r.mode = mode;
	r.bykey = bykey;
	etl_run_query(&r, sql, nargs, types, values, nulls);
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
