/*-------------------------------------------------------------------------
 *
 * sensors.c
 *	  Upkeep of iotpipe.sensors (first/last seen, location, latest values,
 *	  count) from ingested batches, throttled per backend.
 *
 *	  Upserting every sensor of every batch would rewrite each sensor row
 *	  many times a second (a Kafka worker flushes every 50 ms): the rows of
 *	  iotpipe.sensors would cost as much as the readings.  Instead each
 *	  backend keeps, per sensor, what it has not written yet, and writes a
 *	  sensor when it is new to the backend or its last write is at least
 *	  iotpipe.sensor_refresh old.  iotpipe.ingest_json() writes everything
 *	  pending at the end of each call; workers write pending sensors when
 *	  they go idle.  So iotpipe.sensors lags the readings by at most
 *	  iotpipe.sensor_refresh.
 *
 *	  Transactions: what a transaction merges or writes goes into a delta
 *	  that is applied to the backend cache at commit and dropped at abort,
 *	  so a failed batch that is retried is neither lost nor counted twice.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "sensors.h"
#include "spiutil.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct SensorAgg
{
	TimestampTz first_ts;
	TimestampTz last_ts;
	TimestampTz location_ts;
	TimestampTz temperature_ts;
	TimestampTz humidity_ts;
	double		temperature;
	double		humidity;
	int64		count;
	char	   *location;		/* in the owning hash's context, or NULL */
} SensorAgg;

typedef struct SensorEntry
{
	char		sensor_id[IOTPIPE_MAX_SENSOR_ID * 4 + 1];	/* hash key */
	bool		known;			/* written at least once by this backend */
	bool		pending;		/* agg holds data not written yet */
	TimestampTz written_at;		/* wall clock of the last write */
	SensorAgg	agg;
} SensorEntry;

typedef struct DeltaEntry
{
	char		sensor_id[IOTPIPE_MAX_SENSOR_ID * 4 + 1];	/* hash key */
	bool		has_data;		/* agg holds this transaction's readings */
	bool		written;		/* written (with the cache's pending) in this xact */
	SensorAgg	agg;
} DeltaEntry;

static HTAB *cache = NULL;
static MemoryContext cache_cxt = NULL;
static HTAB *delta = NULL;
static MemoryContext delta_cxt = NULL;
static int	cache_pending = 0;
static SPIPlanPtr upsert_plan = NULL;
static bool callback_registered = false;


static void
agg_init(SensorAgg *a)
{
	memset(a, 0, sizeof(*a));
	a->first_ts = DT_NOEND;
	a->last_ts = DT_NOBEGIN;
	a->location_ts = a->temperature_ts = a->humidity_ts = DT_NOBEGIN;
}

/* merge b into a; location strings are copied into cxt */
static void
agg_merge(SensorAgg *a, const SensorAgg *b, MemoryContext cxt)
{
	a->count += b->count;
	if (b->first_ts < a->first_ts)
		a->first_ts = b->first_ts;
	if (b->last_ts > a->last_ts)
		a->last_ts = b->last_ts;
	if (b->location && b->location_ts >= a->location_ts)
	{
		if (a->location == NULL || strcmp(a->location, b->location) != 0)
		{
			if (a->location)
				pfree(a->location);
			a->location = MemoryContextStrdup(cxt, b->location);
		}
		a->location_ts = b->location_ts;
	}
	if (b->temperature_ts > DT_NOBEGIN && b->temperature_ts >= a->temperature_ts)
	{
		a->temperature = b->temperature;
		a->temperature_ts = b->temperature_ts;
	}
	if (b->humidity_ts > DT_NOBEGIN && b->humidity_ts >= a->humidity_ts)
	{
		a->humidity = b->humidity;
		a->humidity_ts = b->humidity_ts;
	}
}

static void
agg_add_reading(SensorAgg *a, const IotReading *r, MemoryContext cxt)
{
	a->count++;
	if (r->ts < a->first_ts)
		a->first_ts = r->ts;
	if (r->ts > a->last_ts)
		a->last_ts = r->ts;
	if (r->location && r->ts >= a->location_ts)
	{
		if (a->location == NULL || strcmp(a->location, r->location) != 0)
		{
			if (a->location)
				pfree(a->location);
			a->location = MemoryContextStrdup(cxt, r->location);
		}
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

static void
sensors_xact_callback(XactEvent event, void *arg)
{
	HASH_SEQ_STATUS seq;
	DeltaEntry *d;
	TimestampTz now;

	if (delta == NULL)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		now = GetCurrentTimestamp();
		hash_seq_init(&seq, delta);
		while ((d = hash_seq_search(&seq)) != NULL)
		{
			bool		found;
			SensorEntry *e = hash_search(cache, d->sensor_id, HASH_ENTER, &found);

			if (!found)
			{
				e->known = false;
				e->pending = false;
				e->written_at = 0;
				agg_init(&e->agg);
			}
			if (d->written)
			{
				/* the write covered the cache's pending data */
				if (e->pending)
					cache_pending--;
				if (e->agg.location)
					pfree(e->agg.location);
				agg_init(&e->agg);
				e->pending = false;
				e->known = true;
				e->written_at = now;
			}
			if (d->has_data)
			{
				/* readings merged after the last write of this transaction */
				agg_merge(&e->agg, &d->agg, cache_cxt);
				if (!e->pending)
					cache_pending++;
				e->pending = true;
			}
		}
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
	{
		delta = NULL;
		MemoryContextReset(delta_cxt);
	}
}

static void
ensure_state(void)
{
	HASHCTL		ctl;

	if (cache_cxt == NULL)
	{
		cache_cxt = AllocSetContextCreate(TopMemoryContext, "iotpipe sensors cache",
										  ALLOCSET_DEFAULT_SIZES);
		delta_cxt = AllocSetContextCreate(TopMemoryContext, "iotpipe sensors delta",
										  ALLOCSET_DEFAULT_SIZES);
	}
	/* a bounded cache: a backend that saw very many sensors starts over */
	if (cache != NULL && delta == NULL && cache_pending == 0 &&
		hash_get_num_entries(cache) > 200000)
	{
		hash_destroy(cache);
		cache = NULL;
		MemoryContextReset(cache_cxt);
	}
	if (cache == NULL)
	{
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(((SensorEntry *) 0)->sensor_id);
		ctl.entrysize = sizeof(SensorEntry);
		ctl.hcxt = cache_cxt;
		cache = hash_create("iotpipe sensors cache", 1024, &ctl,
							HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	if (!callback_registered)
	{
		RegisterXactCallback(sensors_xact_callback, NULL);
		callback_registered = true;
	}
	if (delta == NULL)
	{
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(((DeltaEntry *) 0)->sensor_id);
		ctl.entrysize = sizeof(DeltaEntry);
		ctl.hcxt = delta_cxt;
		delta = hash_create("iotpipe sensors delta", 256, &ctl,
							HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
}

static DeltaEntry *
delta_entry(const char *sensor_id)
{
	bool		found;
	DeltaEntry *d = hash_search(delta, sensor_id, HASH_ENTER, &found);

	if (!found)
	{
		d->has_data = false;
		d->written = false;
		agg_init(&d->agg);
	}
	return d;
}

/*
 * Merge a batch's accepted readings into this transaction's delta.
 */
void
iotpipe_sensors_note(IotReading *readings, int n)
{
	int			i;

	ensure_state();
	for (i = 0; i < n; i++)
	{
		DeltaEntry *d = delta_entry(readings[i].sensor_id);

		agg_add_reading(&d->agg, &readings[i], delta_cxt);
		d->has_data = true;
	}
}

typedef struct WriteItem
{
	const char *sensor_id;
	SensorAgg	agg;
} WriteItem;

static int
writeitem_cmp(const void *a, const void *b)
{
	return strcmp(((const WriteItem *) a)->sensor_id, ((const WriteItem *) b)->sensor_id);
}

/*
 * Write the sensors that are due (all pending ones when all is true) in
 * the current transaction.  The caller has SPI connected.
 */
void
iotpipe_sensors_write(bool all)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		refresh = (int64) iotpipe_sensor_refresh_ms * 1000;
	HASH_SEQ_STATUS seq;
	DeltaEntry *d;
	SensorEntry *e;
	WriteItem  *items;
	int			n = 0,
				cap,
				i;
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

	ensure_state();

	/* pending cache entries that are due take part even if not in this batch */
	if (cache_pending > 0)
	{
		hash_seq_init(&seq, cache);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (e->pending && (all || now - e->written_at >= refresh))
				(void) delta_entry(e->sensor_id);
		}
	}

	cap = Max(hash_get_num_entries(delta), 1);
	items = palloc(sizeof(WriteItem) * cap);
	hash_seq_init(&seq, delta);
	while ((d = hash_seq_search(&seq)) != NULL)
	{
		bool		found;
		bool		due;

		if (d->written)
		{
			/* written earlier in this transaction: due again only if all */
			if (!(all && d->has_data))
				continue;
		}
		e = hash_search(cache, d->sensor_id, HASH_FIND, &found);
		due = all || !found || !e->known || now - e->written_at >= refresh;
		if (!due || (!d->has_data && !(found && e->pending)))
			continue;
		items[n].sensor_id = d->sensor_id;
		agg_init(&items[n].agg);
		if (found && e->pending && !d->written)
			agg_merge(&items[n].agg, &e->agg, CurrentMemoryContext);
		agg_merge(&items[n].agg, &d->agg, CurrentMemoryContext);
		/* what is written now is not in the delta any more */
		if (d->agg.location)
			pfree(d->agg.location);
		agg_init(&d->agg);
		d->has_data = false;
		d->written = true;
		n++;
	}
	if (n == 0)
		return;

	/* a stable lock order: concurrent workers never deadlock on sensors */
	qsort(items, n, sizeof(WriteItem), writeitem_cmp);

	ids = palloc(sizeof(Datum) * n);
	locs = palloc(sizeof(Datum) * n);
	firsts = palloc(sizeof(Datum) * n);
	lasts = palloc(sizeof(Datum) * n);
	temps = palloc(sizeof(Datum) * n);
	hums = palloc(sizeof(Datum) * n);
	counts = palloc(sizeof(Datum) * n);
	locnulls = palloc(sizeof(bool) * n);
	tempnulls = palloc(sizeof(bool) * n);
	humnulls = palloc(sizeof(bool) * n);
	for (i = 0; i < n; i++)
	{
		SensorAgg  *a = &items[i].agg;

		ids[i] = PointerGetDatum(cstring_to_text(items[i].sensor_id));
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
	args[0] = iotpipe_text_array(ids, NULL, n);
	args[1] = iotpipe_text_array(locs, locnulls, n);
	args[2] = iotpipe_byval_array(firsts, NULL, n, TIMESTAMPTZOID);
	args[3] = iotpipe_byval_array(lasts, NULL, n, TIMESTAMPTZOID);
	args[4] = iotpipe_float8_array(temps, tempnulls, n);
	args[5] = iotpipe_float8_array(hums, humnulls, n);
	args[6] = iotpipe_byval_array(counts, NULL, n, INT8OID);
	args[7] = TimestampTzGetDatum(now);

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
}

/* does this backend hold sensor data not written yet? */
bool
iotpipe_sensors_pending(void)
{
	return cache_pending > 0 || (delta != NULL && hash_get_num_entries(delta) > 0);
}
