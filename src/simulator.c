/*-------------------------------------------------------------------------
 *
 * simulator.c
 *	  The simulator worker (started by the launcher from the desired state
 *	  in iotpipe.simulator) and iotpipe.simulate(), the same generator as a
 *	  set-returning function.
 *
 *	  The worker paces itself against the clock: after t seconds it has
 *	  produced rate x t readings (give or take one flush interval), in one
 *	  transaction per tick of iotpipe.flush_interval.  With sink 'direct' each
 *	  tick is one ingest-core batch; with sink 'kafka' the messages go to a
 *	  topic, keyed by sensor_id.
 *
 *	  States: starting -> running <-> backoff (a failed batch is kept and
 *	  retried, so nothing generated is lost) -> stopped.  It waits only in
 *	  iotpipe_worker_wait() and runs its transactions through the worker
 *	  runtime (worker.h), which also serves SIGTERM and SIGHUP.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "ingest.h"
#include "kafka_producer.h"
#include "sensors.h"
#include "simgen.h"
#include "status.h"
#include "worker.h"
#include "simulator.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "version.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct SimConfig
{
	bool		enabled;
	int			sensors;
	double		rate;
	int64		seed;
	char		sink[16];
	char		topic[256];
	char		brokers[1024];
	double		malformed_ratio;
	TimestampTz start_ts;
	int			generation;
	int64		position;		/* readings already written by this run */
} SimConfig;

typedef struct ConfigArgs
{
	SimConfig  *cfg;
	bool		found;
} ConfigArgs;

static void
read_config_tx(void *arg)
{
	ConfigArgs *ca = (ConfigArgs *) arg;
	SimConfig  *cfg = ca->cfg;
	int			ret;

	ret = SPI_execute("SELECT s.enabled, s.sensors, s.rate, s.seed, s.sink, coalesce(s.topic, ''), "
					  "coalesce(s.brokers, ''), s.malformed_ratio, s.start_ts, s.generation, s.position "
					  "FROM iotpipe.simulator s", true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *s;
		Datum		d;

		cfg->enabled = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		cfg->sensors = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		cfg->rate = DatumGetFloat8(SPI_getbinval(tup, desc, 3, &isnull));
		cfg->seed = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		s = SPI_getvalue(tup, desc, 5);
		strlcpy(cfg->sink, s, sizeof(cfg->sink));
		s = SPI_getvalue(tup, desc, 6);
		strlcpy(cfg->topic, s, sizeof(cfg->topic));
		s = SPI_getvalue(tup, desc, 7);
		strlcpy(cfg->brokers, s, sizeof(cfg->brokers));
		cfg->malformed_ratio = DatumGetFloat8(SPI_getbinval(tup, desc, 8, &isnull));
		d = SPI_getbinval(tup, desc, 9, &isnull);
		cfg->start_ts = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
		cfg->generation = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		cfg->position = DatumGetInt64(SPI_getbinval(tup, desc, 11, &isnull));
		ca->found = true;
	}
}

static bool
read_config(SimConfig *cfg)
{
	ConfigArgs	ca = {.cfg = cfg};

	return iotpipe_worker_xact(read_config_tx, &ca, "reading settings", true) && ca.found;
}

/* the one wait */
static void
sim_wait(long timeout_ms)
{
	(void) iotpipe_worker_wait(timeout_ms, PGINVALID_SOCKET);
}

static void
fold_sensors_tx(void *arg)
{
	iotpipe_sensors_fold_own();
}

typedef struct FlushArgs
{
	IotBatch   *batch;
	int			generation;		/* of the row's settings this run has */
	int64		position;		/* the generator's position after the batch; -1: not kept */
	uint64		accepted;
	uint64		rejected;
} FlushArgs;

/*
 * The batch's rows and, with start_ts, the generator's position after them,
 * in one transaction: a restart (kill -9, crash or server restart) resumes
 * exactly after the last committed reading, neither repeating nor skipping
 * one.  The position is only moved for the run's own generation: a
 * simulator_start() in between (which resets it) wins.
 */
static void
flush_tx(void *arg)
{
	FlushArgs  *fa = (FlushArgs *) arg;

	iotpipe_batch_flush(fa->batch, &fa->accepted, &fa->rejected);
	if (fa->position >= 0)
	{
		Oid			types[2] = {INT8OID, INT4OID};
		Datum		values[2] = {Int64GetDatum(fa->position), Int32GetDatum(fa->generation)};

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("UPDATE iotpipe.simulator s SET position = $1 "
								  "WHERE s.generation = $2",
								  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record the simulator's position");
		SPI_finish();
	}
}

/* write one batch in its own transaction; false (and state backoff) on failure */
static bool
flush_direct(IotBatch *batch, int generation, int64 position)
{
	FlushArgs	fa = {.batch = batch, .generation = generation, .position = position};
	char	   *err;

	if (!iotpipe_run_xact(flush_tx, &fa, "iotpipe simulator: writing a batch", false, &err))
	{
		iotpipe_set_error("%s", err);
		iotpipe_set_state(IOT_STATE_BACKOFF, "batch failed; retrying");
		ereport(LOG,
				(errmsg("iotpipe simulator: could not write a batch of %d messages: %s",
						iotpipe_batch_count(batch), err),
				 errdetail("The batch is kept and retried.")));
		pfree(err);
		return false;
	}
	iotpipe_count(fa.accepted + fa.rejected, fa.accepted, fa.rejected);
	return true;
}

void
iotpipe_simulator_main(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	SimConfig	cfg;
	SimGen	   *gen;
	IotBatch   *batch;
	IotProducer *producer = NULL;
	MemoryContext workcxt;
	StringInfoData msg;
	IotSource	src = {.source = "simulator"};
	TimestampTz started;
	TimestampTz last_rate_at;
	TimestampTz prev_tick;
	uint64		emitted = 0;
	int			backoff_ms = 500;
	bool		pending = false;	/* a failed batch waits to be retried */
	bool		keep_position;	/* reproducible run: the position is committed */

	iotpipe_worker_init(slotno, IOT_WORKER_SIMULATOR);
	pgstat_report_appname("iotpipe simulator");

	workcxt = AllocSetContextCreate(TopMemoryContext, "iotpipe simulator", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(workcxt);

	if (!read_config(&cfg) || !cfg.enabled)
	{
		iotpipe_set_state(IOT_STATE_STOPPED, "disabled");
		proc_exit(0);
	}
	{
		char		detail[IOTPIPE_ERRLEN];

		snprintf(detail, sizeof(detail), "sensors=%d rate=%g seed=" INT64_FORMAT " sink=%s%s%s",
				 cfg.sensors, cfg.rate, cfg.seed, cfg.sink,
				 cfg.sink[0] == 'k' ? " topic=" : "", cfg.sink[0] == 'k' ? cfg.topic : "");
		iotpipe_set_state(IOT_STATE_RUNNING, detail);
	}
	iotpipe_clear_error();
	ereport(LOG,
			(errmsg("iotpipe simulator started: %d sensors, %g readings/s, seed " INT64_FORMAT ", sink %s",
					cfg.sensors, cfg.rate, cfg.seed, cfg.sink)));

	gen = simgen_create(cfg.sensors, cfg.seed, cfg.malformed_ratio, cfg.start_ts,
						cfg.rate > 0 ? 1.0 / cfg.rate : 0.001);
	batch = iotpipe_batch_create(workcxt);
	initStringInfo(&msg);

	/*
	 * With start_ts (virtual event time) and the direct sink the run is
	 * reproducible: its position is committed with every batch and a
	 * restarted simulator fast-forwards the generator to it.  Wall-clock
	 * runs start their signal afresh (their event times never repeat), and
	 * the kafka sink cannot commit a position with its deliveries.
	 */
	keep_position = cfg.start_ts != DT_NOBEGIN && strcmp(cfg.sink, "direct") == 0;
	if (keep_position && cfg.position > 0)
	{
		TimestampTz t0 = GetCurrentTimestamp();
		int64		left = cfg.position;

		while (left > 0 && !iotpipe_worker_should_stop())
		{
			int64		chunk = Min(left, (int64) 1000000);

			simgen_skip(gen, chunk);
			left -= chunk;
			iotpipe_worker_handle_interrupts();
		}
		ereport(LOG,
				(errmsg("iotpipe simulator resumes at reading " INT64_FORMAT " (fast-forward took %ld ms)",
						cfg.position, (long) ((GetCurrentTimestamp() - t0) / 1000))));
	}

	/* the kafka sink needs a producer; keep trying until it can be made */
	while (strcmp(cfg.sink, "kafka") == 0 && producer == NULL && !iotpipe_worker_should_stop())
	{
		char		errbuf[512];

		producer = iotpipe_producer_create(cfg.brokers, cfg.topic, errbuf, sizeof(errbuf));
		if (producer == NULL)
		{
			iotpipe_set_error("kafka producer: %s", errbuf);
			iotpipe_set_state(IOT_STATE_BACKOFF, "cannot create the kafka producer");
			sim_wait(5000);
		}
	}

	started = prev_tick = last_rate_at = GetCurrentTimestamp();
	while (!iotpipe_worker_should_stop())
	{
		TimestampTz now = GetCurrentTimestamp();
		int64		due;
		int			n,
					i;

		if (now - last_rate_at >= USECS_PER_SEC)
		{
			iotpipe_update_rate();
			last_rate_at = now;
		}

		if (pending)
		{
			/* retry the failed batch before making new readings */
			if (flush_direct(batch, cfg.generation,
							 keep_position ? simgen_position(gen) : -1))
			{
				pending = false;
				backoff_ms = 500;
				iotpipe_clear_error();
				iotpipe_set_state(IOT_STATE_RUNNING, NULL);
				iotpipe_batch_reset(batch);
			}
			else
			{
				sim_wait(backoff_ms);
				backoff_ms = Min(backoff_ms * 2, 30000);
			}
			continue;
		}

		if (cfg.rate > 0)
		{
			double		elapsed = (double) (now - started) / USECS_PER_SEC;

			due = (int64) floor(cfg.rate * elapsed) - (int64) emitted;
			/* far behind (we cannot keep up): do not try to catch up forever */
			if (due > Max((int64) iotpipe_batch_size, (int64) cfg.rate) * 2)
			{
				started = now - (int64) ((double) emitted / cfg.rate * USECS_PER_SEC);
				due = iotpipe_batch_size;
			}
		}
		else
			due = iotpipe_batch_size;

		/*
		 * One batch per flush interval: wait until the interval is over
		 * unless a whole batch is already due.
		 */
		if (due < iotpipe_batch_size &&
			now - prev_tick < (int64) iotpipe_flush_interval_ms * 1000)
		{
			long		wait_ms = (long) ((prev_tick + (int64) iotpipe_flush_interval_ms * 1000 - now + 999) / 1000);

			sim_wait(Max(1, wait_ms));
			continue;
		}
		if (due <= 0)
		{
			long		wait_ms;

			/* sleep until the next reading is due */
			wait_ms = (long) ceil(((double) (emitted + 1) / cfg.rate -
								   (double) (now - started) / USECS_PER_SEC) * 1000.0);
			sim_wait(Max(1, wait_ms));
			continue;
		}

		n = (int) Min(due, (int64) iotpipe_batch_size);
		for (i = 0; i < n; i++)
		{
			/* spread event times over the tick: no two readings of a sensor share one */
			TimestampTz ts = prev_tick + (now - prev_tick) * (i + 1) / n;

			resetStringInfo(&msg);
			simgen_next(gen, &msg, ts);
			if (producer)
			{
				const char *key = simgen_sensor_id(gen, simgen_sensor_of_last(gen));

				while (!iotpipe_producer_send(producer, key, strlen(key), msg.data, msg.len))
				{
					char		errbuf[256];

					(void) iotpipe_producer_poll(producer, 100, errbuf, sizeof(errbuf));
					iotpipe_worker_handle_interrupts();
					if (iotpipe_worker_should_stop())
						break;
				}
			}
			else
				iotpipe_batch_add(batch, msg.data, msg.len, &src);
		}
		prev_tick = now;
		emitted += n;

		if (producer)
		{
			char		errbuf[256];
			int			failed = iotpipe_producer_poll(producer, 0, errbuf, sizeof(errbuf));

			if (failed > 0)
			{
				iotpipe_set_error("kafka delivery failed for %d messages: %s", failed, errbuf);
				iotpipe_set_state(IOT_STATE_BACKOFF, "kafka deliveries failing");
			}
			else
				iotpipe_set_state(IOT_STATE_RUNNING, NULL);
			iotpipe_count(n, 0, 0);
		}
		else if (flush_direct(batch, cfg.generation,
							  keep_position ? simgen_position(gen) : -1))
			iotpipe_batch_reset(batch);
		else
			pending = true;

		if (cfg.rate == 0)
		{
			/* as fast as possible, but stay responsive */
			iotpipe_worker_handle_interrupts();
		}
	}

	if (producer)
	{
		char		errbuf[256];

		(void) iotpipe_producer_poll(producer, 5000, errbuf, sizeof(errbuf));
		iotpipe_producer_destroy(producer);
	}
	else
	{
		/* leave iotpipe.sensors complete: fold this worker's deltas */
		(void) iotpipe_worker_xact(fold_sensors_tx, NULL, "folding sensor deltas", true);
	}
	ereport(LOG, (errmsg("iotpipe simulator stopping after " UINT64_FORMAT " readings", emitted)));
	iotpipe_set_state(IOT_STATE_STOPPED, NULL);
	proc_exit(0);
}

/*
 * iotpipe.simulate(sensors, readings, seed, start_ts, malformed_ratio)
 */
PG_FUNCTION_INFO_V1(iotpipe_simulate);
Datum
iotpipe_simulate(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		sensors = PG_GETARG_INT32(0);
	int64		readings = PG_GETARG_INT64(1);
	int64		seed = PG_GETARG_INT64(2);
	TimestampTz start_ts = PG_GETARG_TIMESTAMPTZ(3);
	double		malformed = PG_GETARG_FLOAT8(4);
	SimGen	   *gen;
	StringInfoData buf;
	int64		i;

	iotpipe_require_version();

	if (sensors < 1 || sensors > 1000000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid number of sensors: %d", sensors),
				 errhint("Use between 1 and 1000000 sensors.")));
	if (readings < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid number of readings: " INT64_FORMAT, readings)));
	if (!(malformed >= 0 && malformed <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid malformed_ratio: %g", malformed),
				 errhint("Use a share between 0 and 1.")));
	if (TIMESTAMP_NOT_FINITE(start_ts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("start_ts must be finite")));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	/* each sensor reports once a second of event time */
	gen = simgen_create(sensors, seed, malformed, start_ts, 1.0 / sensors);
	simgen_set_text_safe(gen, true);
	initStringInfo(&buf);
	for (i = 0; i < readings; i++)
	{
		Datum		value;
		bool		isnull = false;

		CHECK_FOR_INTERRUPTS();
		resetStringInfo(&buf);
		simgen_next(gen, &buf, 0);
		value = PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
		pfree(DatumGetPointer(value));
	}
	return (Datum) 0;
}
