/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one static background worker in iotpipe.database that
 *	  turns desired state kept in tables into running workers.  It only
 *	  supervises: it reads slots through iotpipe_slot_read() copies and
 *	  changes them only through the slot API (worker.h); it waits only in
 *	  iotpipe_worker_wait() and runs its transactions through
 *	  iotpipe_worker_xact().
 *
 *	  Every pass (at most iotpipe.launcher_naptime apart, or when woken by
 *	  a committed simulator_start/stop or kafka_start/stop):
 *
 *	    1. the installed extension must match the library
 *	       (iotpipe_version_ok): if it is missing or older, stop every
 *	       worker, read no iotpipe table, state "waiting" with the reason;
 *	       checked again every pass, so CREATE / ALTER EXTENSION resume it;
 *	       the same while a restore into the database runs (the session
 *	       noted in iotpipe.restore_sessions, or application_name
 *	       pg_restore): "waiting" until it ends
 *	    2. partition upkeep (every minute): yesterday .. today + premake
 *	    3. desired workers: the simulator row, each enabled Kafka source x
 *	       its worker count; each with the generation of its settings
 *	    4. reconcile: stop workers that are not desired or run with old
 *	       settings; start desired ones that do not run, with exponential
 *	       backoff for workers that keep failing early
 *	    5. timers: the alert engine's offline checks (every pass, so at
 *	       least once a second); every iotpipe.etl_interval an ETL worker
 *	       (etl_worker.c: run_etl(), then retention), never two at once
 *
 *	  Workers are started as dynamic background workers that never restart
 *	  by themselves: the launcher is the only supervisor.  After a crash
 *	  restart shared memory is new, the launcher is started again by the
 *	  postmaster and re-creates every desired worker from the tables.  It
 *	  is not started during recovery (BgWorkerStart_RecoveryFinished).
 *	  State machines of all workers: src/README.md.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alerts.h"
#include "guc.h"
#include "ingest.h"
#include "partition.h"
#include "sensors.h"
#include "status.h"
#include "version.h"
#include "worker.h"
#include "launcher.h"

#include <signal.h>

#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct DesiredWorker
{
	IotWorkerKind kind;
	int			key;
	int			index;
	int			config_gen;
	char		name[IOTPIPE_NAMELEN];
} DesiredWorker;

/* launcher-local bookkeeping per slot */
typedef struct SlotLocal
{
	BackgroundWorkerHandle *handle;
	TimestampTz launched_at;
	TimestampTz next_launch_at;
	int			fails;
} SlotLocal;

static SlotLocal *slot_local = NULL;
static MemoryContext launcher_cxt = NULL;
static MemoryContext pass_cxt = NULL;

void
iotpipe_launcher_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "iotpipe", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "iotpipe_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "iotpipe launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "iotpipe launcher", BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(IOT_SLOT_LAUNCHER);
	RegisterBackgroundWorker(&worker);
}

/* ---------- desired state ---------- */

typedef struct PassState
{
	bool		version_ok;
	bool		restoring;		/* a restore into this database runs */
	char		detail[IOTPIPE_ERRLEN];	/* why not, for the status row */
	DesiredWorker *desired;
	int			ndesired;
	int			max_desired;
} PassState;

static void
add_desired(PassState *ps, IotWorkerKind kind, int key, int index, int gen, const char *name)
{
	DesiredWorker *d;

	if (ps->ndesired >= ps->max_desired)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("iotpipe cannot run worker \"%s\": all %d worker slots are in use",
						name, iotpipe_max_workers),
				 errhint("Raise iotpipe.max_workers (and max_worker_processes) and restart the server.")));
		return;
	}
	d = &ps->desired[ps->ndesired++];
	d->kind = kind;
	d->key = key;
	d->index = index;
	d->config_gen = gen;
	strlcpy(d->name, name, IOTPIPE_NAMELEN);
}

static void
read_desired(void *arg)
{
	PassState  *ps = (PassState *) arg;
	int			ret;
	uint64		i;

	ps->ndesired = 0;
	ps->restoring = false;
	/* a missing or older extension: read no iotpipe table */
	ps->version_ok = iotpipe_version_ok(ps->detail, sizeof(ps->detail));
	if (!ps->version_ok)
		return;

	/*
	 * A restore into this database (60_backup.sql): no partition, no worker
	 * until it has ended and iotpipe._restore_finish() has set the ETL's
	 * watermark, so that its partitions, offsets and positions go in as
	 * dumped and nothing is ingested before the watermark is this server's.
	 */
	ret = SPI_execute("SELECT iotpipe._restore_running()", true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		int			pid = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull));

		if (!isnull)
		{
			ps->restoring = true;
			snprintf(ps->detail, sizeof(ps->detail),
					 "a restore is running (pid %d): no partition upkeep and no workers until it ends", pid);
			return;
		}
	}
	/* once after a restore (a no-op otherwise); a lock wait is retried next pass */
	SPI_execute("SET LOCAL lock_timeout = 1000", false, 0);
	ret = SPI_execute("SELECT iotpipe._restore_finish()", false, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		{
			ps->restoring = true;
			strlcpy(ps->detail, "a restore is running: no partition upkeep and no workers until it ends",
					sizeof(ps->detail));
			return;
		}
	}
	SPI_execute("SET LOCAL lock_timeout TO DEFAULT", false, 0);

	ret = SPI_execute("SELECT s.generation FROM iotpipe.simulator s WHERE s.enabled", true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		int			gen = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull));

		add_desired(ps, IOT_WORKER_SIMULATOR, 0, 0, gen, "simulator");
	}

	/* alert delivery: a notifier while any receiver is enabled (delivery_worker.c) */
	ret = SPI_execute("SELECT 1 FROM iotpipe.receivers r WHERE r.enabled LIMIT 1", true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
		add_desired(ps, IOT_WORKER_NOTIFIER, 0, 0, 0, "notifier");

	ret = SPI_execute("SELECT k.source_id, k.workers, k.generation, k.topic FROM iotpipe.kafka_sources k "
					  "WHERE k.enabled ORDER BY k.source_id", true, 0);
	if (ret == SPI_OK_SELECT)
	{
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int			source_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			int			workers = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			int			gen = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
			char	   *topic = SPI_getvalue(tup, desc, 4);
			int			w;

			for (w = 0; w < workers; w++)
			{
				char		name[IOTPIPE_NAMELEN];

				snprintf(name, sizeof(name), "kafka %s #%d", topic, w + 1);
				add_desired(ps, IOT_WORKER_KAFKA, source_id, w, gen, name);
			}
		}
	}
}

/* ---------- partition upkeep, alert timers ---------- */

static void
partition_upkeep(void *arg)
{
	int32		today = iotpipe_ts_day(GetCurrentTimestamp());
	int			created;

	/*
	 * Attaching a partition takes SHARE UPDATE EXCLUSIVE on iotpipe.readings
	 * (readers and writers do not conflict with it; ANALYZE, a manual LOCK
	 * or another creator's open transaction do): give up after a while and
	 * try again at the next pass rather than stop supervising.
	 */
	(void) set_config_option("lock_timeout", "1s", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	created = iotpipe_create_partitions_range(today - 1, today + iotpipe_partition_premake_days);
	if (created > 0)
		ereport(LOG, (errmsg("iotpipe launcher: created %d partitions of iotpipe.readings", created)));
}

/* readings held for want of a partition (ingest.c): ingest them again */
static void
retry_held(void *arg)
{
	int			n = iotpipe_ingest_retry_held(iotpipe_batch_size);

	if (n > 0)
		ereport(LOG, (errmsg("iotpipe launcher: ingested %d held readings again", n)));
}

static void
alerts_tick(void *arg)
{
	iotpipe_alerts_tick();
}

/* sensor deltas no worker folded: a worker stopped, idle or dead (sensors.c) */
static void
sensors_fold(void *arg)
{
	iotpipe_sensors_fold_stale();
}

/* ---------- starting and stopping workers ---------- */

/* register a dynamic worker for a prepared slot; false when no bgworker slot was free */
static bool
register_worker(int slotno, const char *function, const char *type, const char *name)
{
	BackgroundWorker worker;
	SlotLocal  *sl = &slot_local[slotno];
	MemoryContext old;
	bool		ok;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "iotpipe", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, function, BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "iotpipe %s", name);
	strlcpy(worker.bgw_type, type, BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(slotno);
	worker.bgw_notify_pid = MyProcPid;

	if (sl->handle)
	{
		pfree(sl->handle);
		sl->handle = NULL;
	}
	sl->launched_at = GetCurrentTimestamp();
	old = MemoryContextSwitchTo(launcher_cxt);
	ok = RegisterDynamicBackgroundWorker(&worker, &sl->handle);
	MemoryContextSwitchTo(old);
	if (!ok)
	{
		char		msg[IOTPIPE_ERRLEN];

		sl->handle = NULL;
		snprintf(msg, sizeof(msg), "could not register worker \"%s\": no free background worker slot",
				 name);
		iotpipe_slot_set_error(slotno, msg);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("iotpipe could not start worker \"%s\"", name),
				 errhint("Raise max_worker_processes and restart the server.")));
	}
	return ok;
}

static void
launch_worker(int slotno, DesiredWorker *d)
{
	bool		sim = (d->kind == IOT_WORKER_SIMULATOR);
	bool		notifier = (d->kind == IOT_WORKER_NOTIFIER);

	iotpipe_slot_prepare(slotno, d->kind, d->key, d->index, d->config_gen, d->name);
	if (!register_worker(slotno,
						 sim ? "iotpipe_simulator_main" :
						 notifier ? "iotpipe_notifier_main" : "iotpipe_kafka_main",
						 sim ? "iotpipe simulator" :
						 notifier ? "iotpipe notifier" : "iotpipe kafka", d->name))
		slot_local[slotno].next_launch_at = slot_local[slotno].launched_at + 5 * USECS_PER_SEC;
}

static void
stop_worker(int slotno)
{
	int			pid = iotpipe_slot_request_stop(slotno);

	if (pid != 0)
		kill(pid, SIGTERM);
	else if (slot_local[slotno].handle)
		TerminateBackgroundWorker(slot_local[slotno].handle);
}

/* a launched worker that never attached and whose process is gone */
static bool
launch_failed(int slotno)
{
	SlotLocal  *sl = &slot_local[slotno];
	pid_t		pid;

	if (sl->handle == NULL)
		return true;
	return GetBackgroundWorkerPid(sl->handle, &pid) == BGWH_STOPPED;
}

/* a process runs (or is about to) in the slot described by copy */
static bool
slot_busy(int slotno, const IotWorkerSlot *copy)
{
	return copy->pid != 0 || (copy->state == IOT_STATE_STARTING && !launch_failed(slotno));
}

/* ---------- reconcile ---------- */

static void
reconcile(PassState *ps)
{
	int			nslots = iotpipe_shared->nslots;
	int		   *slot_of = palloc(sizeof(int) * Max(ps->ndesired, 1));
	bool	   *wanted = palloc0(sizeof(bool) * nslots);
	IotWorkerSlot *copy = palloc(sizeof(IotWorkerSlot) * nslots);
	TimestampTz now = GetCurrentTimestamp();
	int			i,
				s;

	for (s = 0; s < nslots; s++)
		iotpipe_slot_read(s, &copy[s]);

	/* match desired workers to slots */
	for (i = 0; i < ps->ndesired; i++)
	{
		DesiredWorker *d = &ps->desired[i];

		slot_of[i] = -1;
		if (d->kind == IOT_WORKER_SIMULATOR)
			slot_of[i] = IOT_SLOT_SIMULATOR;
		else
		{
			for (s = IOT_SLOT_FIRST_KAFKA; s < nslots; s++)
			{
				if (copy[s].state != IOT_STATE_FREE && copy[s].kind == d->kind &&
					copy[s].key == d->key && copy[s].index == d->index)
				{
					slot_of[i] = s;
					break;
				}
			}
			if (slot_of[i] < 0)
			{
				for (s = IOT_SLOT_FIRST_KAFKA; s < nslots; s++)
				{
					if (copy[s].state == IOT_STATE_FREE && !wanted[s])
					{
						slot_of[i] = s;
						/* a fresh slot starts with fresh counters */
						iotpipe_slot_reset(s);
						iotpipe_slot_read(s, &copy[s]);
						slot_local[s].fails = 0;
						slot_local[s].next_launch_at = 0;
						slot_local[s].launched_at = 0;
						break;
					}
				}
			}
			if (slot_of[i] < 0)
			{
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("iotpipe has no free worker slot for \"%s\"", d->name),
						 errhint("Raise iotpipe.max_workers and restart the server.")));
				continue;
			}
		}
		wanted[slot_of[i]] = true;
	}

	/* stop what is not wanted; free slots of removed Kafka workers (the ETL slot is the timer's) */
	for (s = IOT_SLOT_SIMULATOR; s < nslots; s++)
	{
		if (s == IOT_SLOT_ETL || wanted[s] || copy[s].state == IOT_STATE_FREE)
			continue;
		if (slot_busy(s, &copy[s]))
			stop_worker(s);
		else if (s >= IOT_SLOT_FIRST_KAFKA)
			iotpipe_slot_set_state(s, IOT_STATE_FREE, NULL);
		else if (copy[s].state != IOT_STATE_STOPPED)
			iotpipe_slot_set_state(s, IOT_STATE_STOPPED, NULL);
	}

	/* start what is wanted and not running; restart what runs old settings */
	for (i = 0; i < ps->ndesired; i++)
	{
		DesiredWorker *d = &ps->desired[i];
		SlotLocal  *sl;

		if (slot_of[i] < 0)
			continue;
		s = slot_of[i];
		sl = &slot_local[s];

		if (copy[s].pid != 0)
		{
			if (copy[s].config_gen != d->config_gen)
				stop_worker(s);
			else if (copy[s].kind == d->kind)
				sl->fails = (now - copy[s].started_at > 30 * USECS_PER_SEC) ? 0 : sl->fails;
			continue;
		}
		if (copy[s].state == IOT_STATE_STARTING && !launch_failed(s))
		{
			/* registered; not attached yet */
			if (now - sl->launched_at < 30 * USECS_PER_SEC)
				continue;
		}
		if (now < sl->next_launch_at)
			continue;
		/* a worker that died soon after its start backs off exponentially */
		if (sl->launched_at != 0 && now - sl->launched_at < 30 * USECS_PER_SEC)
			sl->fails++;
		sl->next_launch_at = now + Min((int64) 30, (int64) 1 << Min(sl->fails, 5)) * USECS_PER_SEC / 2;
		launch_worker(s, d);
	}
}

static void
stop_all_workers(void)
{
	int			s;

	for (s = IOT_SLOT_SIMULATOR; s < iotpipe_shared->nslots; s++)
	{
		IotWorkerSlot copy;

		iotpipe_slot_read(s, &copy);
		if (copy.state == IOT_STATE_FREE)
			continue;
		if (slot_busy(s, &copy))
			stop_worker(s);
		else
			iotpipe_slot_set_state(s, IOT_STATE_FREE, NULL);
	}
}

/* ---------- the ETL schedule ---------- */

/*
 * Every iotpipe.etl_interval (from the start of one run to the start of
 * the next) start an ETL worker, unless one still runs.  The launcher
 * never waits for it: a long run delays nothing here.
 */
static void
etl_schedule(TimestampTz now, TimestampTz *last_start)
{
	IotWorkerSlot copy;

	iotpipe_slot_read(IOT_SLOT_ETL, &copy);
	if (slot_busy(IOT_SLOT_ETL, &copy))
		return;
	if (copy.state == IOT_STATE_STARTING)
	{
		/* registered, but gone without attaching: counts as a failed run */
		iotpipe_slot_set_state(IOT_SLOT_ETL, IOT_STATE_IDLE, "last run did not start");
		copy.state = IOT_STATE_IDLE;
	}
	if (iotpipe_etl_interval_s <= 0)
	{
		/* ETL off: no row in iotpipe.status */
		if (copy.state != IOT_STATE_FREE)
			iotpipe_slot_set_state(IOT_SLOT_ETL, IOT_STATE_FREE, "off");
		return;
	}
	if (*last_start != 0 && now - *last_start < (int64) iotpipe_etl_interval_s * USECS_PER_SEC)
		return;
	*last_start = now;
	/* each run starts with fresh counters: the row describes the last run */
	iotpipe_slot_reset(IOT_SLOT_ETL);
	iotpipe_slot_prepare(IOT_SLOT_ETL, IOT_WORKER_ETL, 0, 0, 0, "etl");
	if (!register_worker(IOT_SLOT_ETL, "iotpipe_etl_main", "iotpipe etl", "etl"))
		iotpipe_slot_set_state(IOT_SLOT_ETL, IOT_STATE_IDLE, "last run did not start");
}

/* ---------- the pass ---------- */

void
iotpipe_launcher_main(Datum arg)
{
	PassState	ps;
	TimestampTz last_upkeep = 0;
	TimestampTz last_held = 0;
	TimestampTz last_etl = 0;
	bool		was_ok = false;

	iotpipe_worker_init(IOT_SLOT_LAUNCHER, IOT_WORKER_LAUNCHER);
	pgstat_report_appname("iotpipe launcher");

	launcher_cxt = AllocSetContextCreate(TopMemoryContext, "iotpipe launcher", ALLOCSET_DEFAULT_SIZES);
	pass_cxt = AllocSetContextCreate(launcher_cxt, "iotpipe launcher pass", ALLOCSET_DEFAULT_SIZES);
	slot_local = MemoryContextAllocZero(launcher_cxt, sizeof(SlotLocal) * iotpipe_shared->nslots);
	ps.max_desired = iotpipe_shared->nslots - IOT_SLOT_FIRST_KAFKA + 1;
	ps.desired = MemoryContextAlloc(launcher_cxt, sizeof(DesiredWorker) * ps.max_desired);

	ereport(LOG, (errmsg("iotpipe launcher started in database \"%s\"", iotpipe_database)));

	while (!iotpipe_worker_should_stop())
	{
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);

		if (RecoveryInProgress())
			iotpipe_set_state(IOT_STATE_RECOVERY, "server in recovery");
		else if (iotpipe_worker_xact(read_desired, &ps, "reading the desired state", true))
		{
			TimestampTz now = GetCurrentTimestamp();

			if (!ps.version_ok || ps.restoring)
			{
				/*
				 * no extension, or an older one: nothing runs until it
				 * matches; a restore: nothing runs until it ends
				 */
				iotpipe_set_state(IOT_STATE_WAITING, ps.detail);
				stop_all_workers();
				was_ok = false;
				last_upkeep = 0;
			}
			else
			{
				if (!was_ok)
				{
					iotpipe_set_state(IOT_STATE_RUNNING, "");
					iotpipe_clear_error();
					was_ok = true;
				}
				if (now - last_upkeep >= 60 * USECS_PER_SEC)
				{
					if (iotpipe_worker_xact(partition_upkeep, NULL, "partition upkeep", false))
						last_upkeep = now;
				}
				if (now - last_held >= 5 * USECS_PER_SEC)
				{
					if (iotpipe_worker_xact(retry_held, NULL, "ingesting held readings", false))
						last_held = now;
				}
				reconcile(&ps);
				(void) iotpipe_worker_xact(alerts_tick, NULL, "alert timers", false);
				(void) iotpipe_worker_xact(sensors_fold, NULL, "folding sensor deltas", true);
				etl_schedule(GetCurrentTimestamp(), &last_etl);
			}
		}
		iotpipe_count(0, 0, 0);

		MemoryContextSwitchTo(launcher_cxt);
		(void) iotpipe_worker_wait(iotpipe_launcher_naptime_ms, PGINVALID_SOCKET);
	}

	/*
	 * Exit code 1, whatever stopped the loop: a static background worker
	 * that exits 0 is unregistered by the postmaster and never comes back,
	 * so pg_terminate_backend() of the launcher (or anything else that
	 * sends it SIGTERM while the server runs) would end supervision for
	 * good.  With 1 the postmaster starts it again after bgw_restart_time
	 * and the new launcher adopts the running workers through their slots.
	 * At a server shutdown the postmaster restarts nothing anyway.
	 */
	ereport(LOG, (errmsg("iotpipe launcher shutting down")));
	proc_exit(1);
}
