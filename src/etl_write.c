/*-------------------------------------------------------------------------
 *
 * etl_write.c
 *	  iotpipe._etl_emit(full): the warehouse ETL's second call, after
 *	  iotpipe._etl_collect() (etl_collect.c) in the same transaction.
 *
 *	  Maps the readings to the dim_sensor version valid at their time; on
 *	  an incremental run adds the facts already loaded in the hours around
 *	  the touched ones (and the hourly rows there, to write only the new and
 *	  the changed); sorts and transforms each sensor version's readings
 *	  (etl_transform.c).  Writes with the bulk writer (bulkwrite.c,
 *	  multi-inserts): on a full load straight into fact_reading and
 *	  fact_sensor_hourly; on an incremental run new facts into fact_reading
 *	  (indexes maintained), changed facts and the refreshed hours into the
 *	  staging tables the SQL upserts from, and the days whose roll-up
 *	  changes into etl_stage_days.
 *
 *	  A warehouse table altered by hand (a column added, dropped or retyped)
 *	  fails the run with the reason: the rows bypass the executor.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "bulkwrite.h"
#include "etl_collect.h"
#include "etl_transform.h"
#include "etl_write.h"
#include "spiutil.h"
#include "version.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(iotpipe_etl_emit);

/* the columns iotpipe writes, matched by name (bulkwrite.c) */
static const BulkColumn fact_columns[FACT_NATTS] = {
	{"sensor_key", INT4OID}, {"ts", TIMESTAMPTZOID}, {"date_key", INT4OID},
	{"time_key", INT2OID}, {"location_key", INT4OID}, {"temperature", FLOAT8OID},
	{"humidity", FLOAT8OID}, {"copies", INT4OID}, {"is_duplicate", BOOLOID},
	{"is_outlier", BOOLOID}, {"is_stuck", BOOLOID}, {"ingest_xid", XID8OID}
};

static const BulkColumn hourly_columns[HOURLY_NATTS] = {
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

static const BulkColumn days_columns[DAYS_NATTS] = {
	{"sensor_key", INT4OID}, {"date_key", INT4OID}, {"day_start", TIMESTAMPTZOID}
};

typedef struct EtlEmit
{
	bool		full;
	BulkWriter *facts;			/* fact_reading */
	BulkWriter *changed;		/* etl_stage_facts (incremental) */
	BulkWriter *hourly;			/* fact_sensor_hourly */
	BulkWriter *hours_changed;	/* etl_stage_hourly (incremental) */
	BulkWriter *days;			/* etl_stage_days (incremental) */
	HTAB	   *old_hours;		/* incremental: the hourly rows loaded */
	int32		last_day_key;	/* the last (sensor_key, date_key) staged */
	int32		last_day;
	EtlSegment	seg;			/* the transform of the current segment */
	int64		facts_new;
	int64		facts_changed;
	int64		hours;
	int64		ndays;
} EtlEmit;

static void
etl_put_fact(EtlEmit *e, BulkWriter *w, const EtlVersion *v, const EtlRow *row,
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
	iotpipe_bulk_put(w, val, nul);
}

static void
etl_put_hour(EtlEmit *e, const EtlVersion *v, const EtlHour *h)
{
	Datum		val[HOURLY_NATTS];
	bool		nul[HOURLY_NATTS];
	int32		date_key;
	int			minute;
	BulkWriter *w = e->hourly;

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
			w = e->hours_changed;
		}
	}
	iotpipe_bulk_put(w, val, nul);
	e->hours++;

	/* the days whose roll-up this changes */
	if (!e->full && (e->ndays == 0 || e->last_day_key != v->key || e->last_day != date_key))
	{
		Datum		dval[DAYS_NATTS];
		bool		dnul[DAYS_NATTS] = {false, false, false};

		dval[0] = Int32GetDatum(v->key);
		dval[1] = Int32GetDatum(date_key);
		dval[2] = TimestampTzGetDatum(h->start - (TimestampTz) (minute / 60) * USECS_PER_HOUR);
		iotpipe_bulk_put(e->days, dval, dnul);
		e->last_day_key = v->key;
		e->last_day = date_key;
		e->ndays++;
	}
}

/* write what etl_transform_segment() made of a segment of sensor version v */
static void
etl_write_segment(EtlEmit *e, const EtlVersion *v, const EtlRow *rows)
{
	EtlSegment *seg = &e->seg;

	for (int64 j = 0; j < seg->nh; j++)
	{
		EtlHour    *hr = &seg->h[j];

		if (!hr->out)
			continue;
		for (int64 k = hr->first; k < hr->first + hr->n; k++)
		{
			EtlFact    *cur = &seg->f[k];
			const EtlRow *r = &rows[cur->row];

			if (cur->ctx < 0)
			{
				etl_put_fact(e, e->facts, v, r, cur);
				e->facts_new++;
			}
			else
			{
				const EtlRow *old = &rows[cur->ctx];

				/* as the upsert's IS DISTINCT FROM: winner, values, copies, flags */
				if (!etl_same_values(old, r) || old->xid != r->xid ||
					old->copies != cur->copies ||
					((old->flags & ROW_F_OUTLIER) != 0) != cur->outlier ||
					((old->flags & ROW_F_STUCK) != 0) != cur->stuck)
				{
					etl_put_fact(e, e->changed, v, r, cur);
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
	Oid			types[1] = {TEXTARRAYOID};
	Datum		vals[1];
	int			rc;

	for (int i = 0; i < st->nsensors; i++)
		ids[i] = PointerGetDatum(cstring_to_text_with_len(st->sensors[i].id,
														  st->sensors[i].idlen));
	vals[0] = iotpipe_text_array(ids, NULL, st->nsensors);
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

	vals[0] = iotpipe_byval_array(ranges.keys, NULL, ranges.n, INT4OID);
	vals[1] = iotpipe_byval_array(ranges.los, NULL, ranges.n, TIMESTAMPTZOID);
	vals[2] = iotpipe_byval_array(ranges.his, NULL, ranges.n, TIMESTAMPTZOID);
	etl_collect_query(st, RECV_FACTS, bykey,
				  "SELECT f.sensor_key, f.ts, f.temperature, f.humidity, f.ingest_xid, f.copies,"
				  "       f.is_outlier, f.is_stuck"
				  "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) AS c (k, lo, hi)"
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
	etl_collect_query(st, RECV_HOURS, NULL,
				  "SELECT h.* FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) AS c (k, lo, hi)"
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
	etl_sort_rows(st);
	t[2] = GetCurrentTimestamp();
	if (!full)
	{
		int64		before = st->nrows;

		etl_load_context(st);
		if (st->nrows > before)
			etl_sort_rows(st);
	}

	t[3] = GetCurrentTimestamp();
	memset(&e, 0, sizeof(e));
	e.full = full;
	etl_segment_init(&e.seg, full);
	e.old_hours = st->old_hours;
	e.facts = iotpipe_bulk_open_table("iotpipe_dw", "fact_reading", fact_columns, FACT_NATTS);
	e.hourly = iotpipe_bulk_open_table("iotpipe_dw", "fact_sensor_hourly", hourly_columns,
									   HOURLY_NATTS);
	if (!full)
	{
		e.changed = iotpipe_bulk_open_table("iotpipe", "etl_stage_facts", fact_columns,
											FACT_NATTS);
		e.hours_changed = iotpipe_bulk_open_table("iotpipe", "etl_stage_hourly", hourly_columns,
												  HOURLY_NATTS);
		e.days = iotpipe_bulk_open_table("iotpipe", "etl_stage_days", days_columns, DAYS_NATTS);
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
			etl_transform_segment(&e.seg, s->rows, lo, k);
			etl_write_segment(&e, &s->vers[v], s->rows);
			lo = k;
			if (k < s->nrows)
				v = etl_version_at(s, v, s->rows[k].ts);
		}
	}

	t[4] = GetCurrentTimestamp();
	iotpipe_bulk_close(e.facts, false);
	iotpipe_bulk_close(e.hourly, false);
	if (!full)
	{
		iotpipe_bulk_close(e.changed, false);
		iotpipe_bulk_close(e.hours_changed, false);
		iotpipe_bulk_close(e.days, false);
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
