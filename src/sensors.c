/*-------------------------------------------------------------------------
 *
 * sensors.c
 *	  Upkeep of iotpipe.sensors (first/last seen, location, latest values,
 *	  readings_total) from ingested batches.
 *
 *	  Every batch writes its sensors in its own transaction, after its
 *	  readings: one set-based upsert per batch, one row per distinct sensor
 *	  of the batch, with the batch's count, first and last event time and
 *	  latest values.  So iotpipe.sensors commits and rolls back with the
 *	  readings, savepoints included, and a crash loses nothing of it:
 *	  readings_total equals count(*) of the sensor's readings ingested
 *	  (0.1.0 held the counts back in backend memory to write each sensor at
 *	  most once a second, and lost or doubled them on a crash or a rolled
 *	  back savepoint).
 *
 *	  Locks: the upsert takes the batch's sensor rows in sensor_id order
 *	  (byte order, the column's "C" collation), so concurrent batches
 *	  (several Kafka workers, the simulator, ingest_json) wait for each
 *	  other on a shared sensor but never deadlock.  The rows are narrow and
 *	  the table has fillfactor 50: the updates are HOT.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "sensors.h"
#include "spiutil.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
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

/*
 * Upsert the sensors of n readings (the rows of a batch that landed), in
 * the current transaction.  The caller has SPI connected; allocations go
 * into the current memory context (the batch's).
 */
void
iotpipe_sensors_upsert(const IotReading *readings, int n)
{
	HASHCTL		ctl;
	HTAB	   *aggs;
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
			   *counts;
	bool	   *locnulls,
			   *tempnulls,
			   *humnulls;
	Datum		args[8];
	int			ret;

	if (n == 0)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(((SensorAgg *) 0)->sensor_id);
	ctl.entrysize = sizeof(SensorAgg);
	ctl.hcxt = CurrentMemoryContext;
	aggs = hash_create("iotpipe batch sensors", Min(n, 1024), &ctl,
					   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (int i = 0; i < n; i++)
	{
		bool		found;

		a = hash_search(aggs, readings[i].sensor_id, HASH_ENTER, &found);
		if (!found)
		{
			a->first_ts = DT_NOEND;
			a->last_ts = DT_NOBEGIN;
			a->location_ts = a->temperature_ts = a->humidity_ts = DT_NOBEGIN;
			a->temperature = a->humidity = 0;
			a->count = 0;
			a->location = NULL;
			nitems++;
		}
		agg_add_reading(a, &readings[i]);
	}

	/* a stable lock order: concurrent batches never deadlock on sensors */
	items = palloc(sizeof(SensorAgg *) * nitems);
	nitems = 0;
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
	}
	args[0] = iotpipe_text_array(ids, NULL, nitems);
	args[1] = iotpipe_text_array(locs, locnulls, nitems);
	args[2] = iotpipe_byval_array(firsts, NULL, nitems, TIMESTAMPTZOID);
	args[3] = iotpipe_byval_array(lasts, NULL, nitems, TIMESTAMPTZOID);
	args[4] = iotpipe_float8_array(temps, tempnulls, nitems);
	args[5] = iotpipe_float8_array(hums, humnulls, nitems);
	args[6] = iotpipe_byval_array(counts, NULL, nitems, INT8OID);
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
						   "ON CONFLICT (sensor_id) DO UPDATE SET "
						   "  location = CASE WHEN excluded.last_seen >= s.last_seen "
						   "                  THEN coalesce(excluded.location, s.location) "
						   "                  ELSE coalesce(s.location, excluded.location) END, "
						   "  last_temperature = CASE WHEN excluded.last_seen >= s.last_seen "
						   "                  THEN coalesce(excluded.last_temperature, s.last_temperature) "
						   "                  ELSE s.last_temperature END, "
						   "  last_humidity = CASE WHEN excluded.last_seen >= s.last_seen "
						   "                  THEN coalesce(excluded.last_humidity, s.last_humidity) "
						   "                  ELSE s.last_humidity END, "
						   "  first_seen = least(s.first_seen, excluded.first_seen), "
						   "  last_seen = greatest(s.last_seen, excluded.last_seen), "
						   "  last_ingested_at = excluded.last_ingested_at, "
						   "  readings_total = s.readings_total + excluded.readings_total",
						   8, types, 0);
	}
	ret = SPI_execute_plan(upsert_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "sensors upsert failed: %s", SPI_result_code_string(ret));
	hash_destroy(aggs);
}
