/*-------------------------------------------------------------------------
 *
 * sensors.c
 *	  Upkeep of iotpipe.sensors (first/last seen, location, latest values,
 *	  readings_total) from ingested batches, in each batch's transaction.
 *
 *	  iotpipe.ingest_json() upserts the sensors of each batch at once: one
 *	  set-based statement, one row per distinct sensor of the batch.
 *
 *	  A worker's batches are small and frequent (one per
 *	  iotpipe.flush_interval): upserting their sensors every time would
 *	  rewrite each sensor row many times a second and cost as much as the
 *	  readings.  Instead each batch inserts ONE row into
 *	  iotpipe.sensor_deltas, arrays holding its sensors' counts, first and
 *	  last event times and latest values, and a worker folds its own deltas
 *	  into iotpipe.sensors once iotpipe.sensor_refresh has passed since its
 *	  last fold, in a batch's transaction; the launcher folds deltas older
 *	  than that (a worker that stopped, went idle or died) every pass.  The
 *	  fold deletes the deltas it applies in the same statement
 *	  (FOR UPDATE SKIP LOCKED: each delta is applied once, by one folder).
 *
 *	  So iotpipe.sensors commits and rolls back with the readings,
 *	  savepoints included, and a crash loses nothing: at every moment
 *	  readings_total plus the sensor's pending deltas equals count(*) of
 *	  its readings, and readings_total alone does within
 *	  iotpipe.sensor_refresh (plus a launcher pass) of the stream pausing.
 *	  0.1.0 held the counts back in backend memory, lost them at a crash
 *	  and applied them although a savepoint rolled back.
 *
 *	  Locks: every upsert and fold takes sensor rows in sensor_id byte
 *	  order, so concurrent batches and folds wait for each other on a
 *	  shared sensor but never deadlock; the deltas themselves are only
 *	  inserted (no lock on anything shared).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "sensors.h"
#include "spiutil.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct SensorAgg
{
	char		sensor_id[IOTPIPE_MAX_SENSOR_ID * 4 + 1];	/* hash key */
	TimestampTz first_ts;
	TimestampTz last_ts;
	TimestampTz location_ts;
	TimestampTz temperature_ts;
	TimestampTz humidity_ts;
	double		temperature;
	double		humidity;
	int64		count;
	const char *location;		/* the reading's (batch memory), or NULL */
} SensorAgg;

static SPIPlanPtr upsert_plan = NULL;
static SPIPlanPtr delta_plan = NULL;
static SPIPlanPtr fold_plan = NULL;
static TimestampTz last_fold = 0;
static bool own_deltas = false;	/* this worker made deltas since its last fold */

/* the ON CONFLICT of every write of iotpipe.sensors (upsert and fold) */
#define SENSORS_ON_CONFLICT \
	"ON CONFLICT (sensor_id) DO UPDATE SET " \
	"  location = CASE WHEN excluded.last_seen >= s.last_seen " \
	"                  THEN coalesce(excluded.location, s.location) " \
	"                  ELSE coalesce(s.location, excluded.location) END, " \
	"  last_temperature = CASE WHEN excluded.last_seen >= s.last_seen " \
	"                  THEN coalesce(excluded.last_temperature, s.last_temperature) " \
	"                  ELSE s.last_temperature END, " \
	"  last_humidity = CASE WHEN excluded.last_seen >= s.last_seen " \
	"                  THEN coalesce(excluded.last_humidity, s.last_humidity) " \
	"                  ELSE s.last_humidity END, " \
	"  first_seen = least(s.first_seen, excluded.first_seen), " \
	"  last_seen = greatest(s.last_seen, excluded.last_seen), " \
	"  last_ingested_at = excluded.last_ingested_at, " \
	"  readings_total = s.readings_total + excluded.readings_total"

static void
agg_add_reading(SensorAgg *a, const IotReading *r)
{
	a->count++;
	if (r->ts < a->first_ts)
		a->first_ts = r->ts;
	if (r->ts > a->last_ts)
		a->last_ts = r->ts;
	if (r->location && r->ts >= a->location_ts)
	{
		a->location = r->location;
		a->location_ts = r->ts;
	}
	if (r->has_temperature && r->ts >= a->temperature_ts)
	{
		a->temperature = r->temperature;
		a->temperature_ts = r->ts;
	}
	if (r->has_humidity && r->ts >= a->humidity_ts)
	{
		a->humidity = r->humidity;
		a->humidity_ts = r->ts;
	}
}

static int
agg_cmp(const void *a, const void *b)
{
	return strcmp((*(SensorAgg *const *) a)->sensor_id, (*(SensorAgg *const *) b)->sensor_id);
}

static HTAB *
agg_table(long size)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(((SensorAgg *) 0)->sensor_id);
	ctl.entrysize = sizeof(SensorAgg);
	ctl.hcxt = CurrentMemoryContext;
	return hash_create("iotpipe sensors", Max(Min(size, 1024), 16), &ctl,
					   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

static SensorAgg *
agg_entry(HTAB *aggs, const char *sensor_id)
{
	bool		found;
	SensorAgg  *a = hash_search(aggs, sensor_id, HASH_ENTER, &found);

	if (!found)
	{
		a->first_ts = DT_NOEND;
		a->last_ts = DT_NOBEGIN;
		a->location_ts = a->temperature_ts = a->humidity_ts = DT_NOBEGIN;
		a->temperature = a->humidity = 0;
		a->count = 0;
		a->location = NULL;
	}
	return a;
}

/*
 * The sensors of aggs as 10 arrays, sorted by sensor_id: ids, locations,
 * first and last event times, latest temperatures, humidities, counts, and
 * the event times of the location, temperature and humidity.  Returns the
 * number of sensors; aggs is destroyed.  In the current memory context.
 */
static int
agg_arrays(HTAB *aggs, Datum *args)
{
	HASH_SEQ_STATUS seq;
	SensorAgg  *a;
	SensorAgg **items;
	int			nitems = 0;
	Datum	   *ids,
			   *locs,
			   *firsts,
			   *lasts,
			   *temps,
			   *hums,
			   *counts,
			   *loc_ts,
			   *temp_ts,
			   *hum_ts;
	bool	   *locnulls,
			   *tempnulls,
			   *humnulls;

	/* a stable lock order: concurrent batches never deadlock on sensors */
	items = palloc(sizeof(SensorAgg *) * Max(hash_get_num_entries(aggs), 1));
	hash_seq_init(&seq, aggs);
	while ((a = hash_seq_search(&seq)) != NULL)
		items[nitems++] = a;
	qsort(items, nitems, sizeof(SensorAgg *), agg_cmp);

	ids = palloc(sizeof(Datum) * nitems);
	locs = palloc(sizeof(Datum) * nitems);
	firsts = palloc(sizeof(Datum) * nitems);
	lasts = palloc(sizeof(Datum) * nitems);
	temps = palloc(sizeof(Datum) * nitems);
	hums = palloc(sizeof(Datum) * nitems);
	counts = palloc(sizeof(Datum) * nitems);
	loc_ts = palloc(sizeof(Datum) * nitems);
	temp_ts = palloc(sizeof(Datum) * nitems);
	hum_ts = palloc(sizeof(Datum) * nitems);
	locnulls = palloc(sizeof(bool) * nitems);
	tempnulls = palloc(sizeof(bool) * nitems);
	humnulls = palloc(sizeof(bool) * nitems);
	for (int i = 0; i < nitems; i++)
	{
		a = items[i];
		ids[i] = PointerGetDatum(cstring_to_text(a->sensor_id));
		locnulls[i] = (a->location == NULL);
		locs[i] = a->location ? PointerGetDatum(cstring_to_text(a->location)) : (Datum) 0;
		firsts[i] = TimestampTzGetDatum(a->first_ts);
		lasts[i] = TimestampTzGetDatum(a->last_ts);
		tempnulls[i] = (a->temperature_ts == DT_NOBEGIN);
		temps[i] = Float8GetDatum(a->temperature);
		humnulls[i] = (a->humidity_ts == DT_NOBEGIN);
		hums[i] = Float8GetDatum(a->humidity);
		counts[i] = Int64GetDatum(a->count);
		loc_ts[i] = TimestampTzGetDatum(a->location_ts);
		temp_ts[i] = TimestampTzGetDatum(a->temperature_ts);
		hum_ts[i] = TimestampTzGetDatum(a->humidity_ts);
	}
	args[0] = iotpipe_text_array(ids, NULL, nitems);
	args[1] = iotpipe_text_array(locs, locnulls, nitems);
	args[2] = iotpipe_byval_array(firsts, NULL, nitems, TIMESTAMPTZOID);
	args[3] = iotpipe_byval_array(lasts, NULL, nitems, TIMESTAMPTZOID);
	args[4] = iotpipe_float8_array(temps, tempnulls, nitems);
	args[5] = iotpipe_float8_array(hums, humnulls, nitems);
	args[6] = iotpipe_byval_array(counts, NULL, nitems, INT8OID);
	args[7] = iotpipe_byval_array(loc_ts, locnulls, nitems, TIMESTAMPTZOID);
	args[8] = iotpipe_byval_array(temp_ts, tempnulls, nitems, TIMESTAMPTZOID);
	args[9] = iotpipe_byval_array(hum_ts, humnulls, nitems, TIMESTAMPTZOID);
	hash_destroy(aggs);
	return nitems;
}

/* the sensors of n readings as agg_arrays() makes them */
static int
batch_arrays(const IotReading *readings, int n, Datum *args)
{
	HTAB	   *aggs = agg_table(n);

	for (int i = 0; i < n; i++)
		agg_add_reading(agg_entry(aggs, readings[i].sensor_id), &readings[i]);
	return agg_arrays(aggs, args);
}

/* upsert the sensors of arrays (agg_arrays' first 7); SPI connected */
static void
run_upsert(const Datum *arrays)
{
	Datum		args[8];
	int			ret;

	memcpy(args, arrays, sizeof(Datum) * 7);
	args[7] = TimestampTzGetDatum(GetCurrentTimestamp());
	if (upsert_plan == NULL)
	{
		static const Oid types[8] = {TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TIMESTAMPTZARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, INT8ARRAYOID, TIMESTAMPTZOID};

		upsert_plan = iotpipe_keep_plan(
						   "INSERT INTO iotpipe.sensors AS s "
						   "  (sensor_id, location, first_seen, last_seen, last_ingested_at, "
						   "   last_temperature, last_humidity, readings_total) "
						   "SELECT u.id, u.loc, u.f, u.l, $8, u.t, u.h, u.c "
						   "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
						   "pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
						   "pg_catalog.unnest($6), pg_catalog.unnest($7)) AS u(id, loc, f, l, t, h, c) "
						   SENSORS_ON_CONFLICT,
						   8, types, 0);
	}
	ret = SPI_execute_plan(upsert_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "sensors upsert failed: %s", SPI_result_code_string(ret));
}

/*
 * Upsert the sensors of n readings (the rows of a batch that landed), in
 * the current transaction (iotpipe.ingest_json).  The caller has SPI
 * connected; allocations go into the current memory context (the batch's).
 */
void
iotpipe_sensors_upsert(const IotReading *readings, int n)
{
	Datum		arrays[10];

	if (n == 0)
		return;
	(void) batch_arrays(readings, n, arrays);
	run_upsert(arrays);
}

/* column k of a delta row as an array of n elements (n: the first column's) */
static void
delta_column(HeapTuple tup, TupleDesc desc, int k, Oid type, int *n, Datum **elems,
			 bool **nulls)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, k, &isnull);
	ArrayType  *arr;
	int16		len;
	bool		byval;
	char		align;
	int			count;

	if (isnull)
		elog(ERROR, "iotpipe.sensor_deltas holds a NULL array");
	arr = DatumGetArrayTypeP(d);
	get_typlenbyvalalign(type, &len, &byval, &align);
	deconstruct_array(arr, type, len, byval, align, elems, nulls, &count);
	if (*n >= 0 && count != *n)
		elog(ERROR, "iotpipe.sensor_deltas holds arrays of different lengths");
	*n = count;
}

/*
 * Fold deltas into iotpipe.sensors, in the current transaction: this
 * backend's own (own), or every delta made before older_than.  The deltas
 * are deleted (those another folder holds are skipped) and merged here,
 * then upserted in one statement.  SPI connected.
 */
static void
fold(bool own, TimestampTz older_than)
{
	static const Oid coltypes[10] = {TEXTOID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	TIMESTAMPTZOID, FLOAT8OID, TIMESTAMPTZOID, FLOAT8OID, TIMESTAMPTZOID};
	Datum		args[3];
	Datum		arrays[10];
	HTAB	   *aggs;
	int			ret;

	args[0] = BoolGetDatum(own);
	args[1] = Int32GetDatum(MyProcPid);
	args[2] = TimestampTzGetDatum(older_than);
	if (fold_plan == NULL)
	{
		static const Oid types[3] = {BOOLOID, INT4OID, TIMESTAMPTZOID};

		fold_plan = iotpipe_keep_plan(
						 "DELETE FROM iotpipe.sensor_deltas WHERE ctid = ANY (ARRAY("
						 "  SELECT x.ctid FROM iotpipe.sensor_deltas x"
						 "   WHERE CASE WHEN $1 THEN x.writer = $2 ELSE x.made_at < $3 END"
						 "     FOR UPDATE SKIP LOCKED)) "
						 "RETURNING sensor_id, readings, first_seen, last_seen, location, "
						 "  location_ts, temperature, temperature_ts, humidity, humidity_ts",
						 3, types, 0);
	}
	ret = SPI_execute_plan(fold_plan, args, NULL, false, 0);
	if (ret != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "sensor deltas delete failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return;

	aggs = agg_table(1024);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum	   *col[10];
		bool	   *isnull[10];
		int			n = -1;

		for (int k = 0; k < 10; k++)
			delta_column(tup, desc, k + 1, coltypes[k], &n, &col[k], &isnull[k]);
		for (int i = 0; i < n; i++)
		{
			char	   *id = TextDatumGetCString(col[0][i]);
			SensorAgg  *a = agg_entry(aggs, id);
			TimestampTz first = DatumGetTimestampTz(col[2][i]);
			TimestampTz last = DatumGetTimestampTz(col[3][i]);

			a->count += DatumGetInt64(col[1][i]);
			if (first < a->first_ts)
				a->first_ts = first;
			if (last > a->last_ts)
				a->last_ts = last;
			if (!isnull[4][i] && DatumGetTimestampTz(col[5][i]) >= a->location_ts)
			{
				a->location = TextDatumGetCString(col[4][i]);
				a->location_ts = DatumGetTimestampTz(col[5][i]);
			}
			if (!isnull[6][i] && DatumGetTimestampTz(col[7][i]) >= a->temperature_ts)
			{
				a->temperature = DatumGetFloat8(col[6][i]);
				a->temperature_ts = DatumGetTimestampTz(col[7][i]);
			}
			if (!isnull[8][i] && DatumGetTimestampTz(col[9][i]) >= a->humidity_ts)
			{
				a->humidity = DatumGetFloat8(col[8][i]);
				a->humidity_ts = DatumGetTimestampTz(col[9][i]);
			}
		}
	}
	(void) agg_arrays(aggs, arrays);
	run_upsert(arrays);
}

/*
 * A worker's batch: its sensors as one row of iotpipe.sensor_deltas, and
 * this worker's deltas folded into iotpipe.sensors when
 * iotpipe.sensor_refresh has passed since its last fold.  In the batch's
 * transaction; SPI connected.
 */
void
iotpipe_sensors_defer(const IotReading *readings, int n)
{
	Datum		args[11];
	TimestampTz now = GetCurrentTimestamp();
	int			ret;

	if (n == 0)
		return;
	args[0] = Int32GetDatum(MyProcPid);
	(void) batch_arrays(readings, n, args + 1);
	if (delta_plan == NULL)
	{
		static const Oid types[11] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
			TIMESTAMPTZARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, INT8ARRAYOID,
		TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID};

		delta_plan = iotpipe_keep_plan(
						  "INSERT INTO iotpipe.sensor_deltas (writer, sensor_id, location, "
						  "  first_seen, last_seen, temperature, humidity, readings, "
						  "  location_ts, temperature_ts, humidity_ts) "
						  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
						  11, types, 0);
	}
	ret = SPI_execute_plan(delta_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "sensor deltas insert failed: %s", SPI_result_code_string(ret));
	own_deltas = true;
	if (now - last_fold >= (int64) iotpipe_sensor_refresh_ms * 1000)
	{
		fold(true, 0);
		last_fold = now;
		own_deltas = false;
	}
}

/*
 * A stopping worker: fold its own deltas now (else the launcher does,
 * within iotpipe.sensor_refresh).  Its own transaction, SPI connected.
 */
void
iotpipe_sensors_fold_own(void)
{
	if (!own_deltas)
		return;
	fold(true, 0);
	own_deltas = false;
}

/*
 * The launcher, every pass: fold the deltas older than
 * iotpipe.sensor_refresh (their worker stopped, is idle or died).  SPI
 * connected.
 */
void
iotpipe_sensors_fold_stale(void)
{
	fold(false, GetCurrentTimestamp() - (int64) iotpipe_sensor_refresh_ms * 1000);
}
