/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one static background worker in iotpipe.database that
 *	  turns desired state kept in tables into running workers.
 *
 *	  Every pass (at most iotpipe.launcher_naptime apart, or when woken by
 *	  a committed simulator_start/stop or kafka_start/stop):
 *
 *	    1. no extension in the database -> stop every worker, state
 *	       "waiting"; the extension may be created (again) at any time
 *	    2. partition upkeep (every minute): yesterday .. today + premake
 *	    3. desired workers: the simulator row, each enabled Kafka source x
 *	       its worker count; each with the generation of its settings
 *	    4. reconcile: stop workers that are not desired or run with old
 *	       settings; start desired ones that do not run, with exponential
 *	       backoff for workers that keep failing early
 *	    5. timers: the alert engine's offline checks (every pass, so at
 *	       least once a second), the ETL every iotpipe.etl_interval, raw
 *	       retention after it
 *
 *	  Workers are started as dynamic background workers that never restart
 *	  by themselves: the launcher is the only supervisor.  After a crash
 *	  restart shared memory is new, the launcher is started again by the
 *	  postmaster and re-creates every desired worker from the tables.  It
 *	  is not started during recovery (BgWorkerStart_RecoveryFinished).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alerts.h"
#include "guc.h"
#include "partition.h"
#include "status.h"
#include "worker.h"
#include "launcher.h"

#include <signal.h>

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
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

/* run fn in its own transaction; log and swallow its errors */
static bool
run_guarded(void (*fn) (void *), void *arg, const char *what)
{
	char	   *err;

	if (iotpipe_run_xact(fn, arg, what, false, &err))
		return true;
	ereport(LOG, (errmsg("iotpipe launcher: %s failed: %s", what, err)));
	iotpipe_set_error("%s: %s", what, err);
	return false;
}

/* ---------- desired state ---------- */

typedef struct PassState
{
	bool		ext_exists;
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

	ps->ext_exists = OidIsValid(get_extension_oid("iotpipe", true));
	ps->ndesired = 0;
	if (!ps->ext_exists)
		return;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute("SELECT generation FROM iotpipe.simulator WHERE enabled", true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		int			gen = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull));

		add_desired(ps, IOT_WORKER_SIMULATOR, 0, 0, gen, "simulator");
	}

	ret = SPI_execute("SELECT source_id, workers, generation, topic FROM iotpipe.kafka_sources "
					  "WHERE enabled ORDER BY source_id", true, 0);
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
	SPI_finish();
}

/* ---------- partition upkeep, ETL, retention ---------- */

static void
partition_upkeep(void *arg)
{
	int32		today = iotpipe_ts_day(GetCurrentTimestamp());
	int			created;

	created = iotpipe_create_partitions_range(today - 1, today + iotpipe_partition_premake_days);
	if (created > 0)
		ereport(LOG, (errmsg("iotpipe launcher: created %d partitions of iotpipe.readings", created)));
}

static void
alerts_tick(void *arg)
{
	iotpipe_alerts_tick();
}

static void
run_sql_if_exists(void *arg)
{
	const char *const *q = (const char *const *) arg;
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* q[0]: a function signature that must exist; q[1]: what to run */
	ret = SPI_execute(psprintf("SELECT to_regprocedure('%s') IS NOT NULL", q[0]), true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
			SPI_execute(q[1], false, 0);
	}
	SPI_finish();
}

/* ---------- reconcile ---------- */

static void
launch_worker(int slotno, DesiredWorker *d)
{
	BackgroundWorker worker;
	IotWorkerSlot *slot = iotpipe_slot(slotno);
	SlotLocal  *sl = &slot_local[slotno];

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "iotpipe", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name,
			d->kind == IOT_WORKER_SIMULATOR ? "iotpipe_simulator_main" : "iotpipe_kafka_main",
			BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "iotpipe %s", d->name);
	strlcpy(worker.bgw_type, d->kind == IOT_WORKER_SIMULATOR ? "iotpipe simulator" : "iotpipe kafka",
			BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(slotno);
	worker.bgw_notify_pid = MyProcPid;

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	if (slot->state != IOT_STATE_FREE && slot->started_at != 0)
		slot->restarts++;
	slot->kind = d->kind;
	slot->key = d->key;
	slot->index = d->index;
	slot->config_gen = d->config_gen;
	strlcpy(slot->name, d->name, IOTPIPE_NAMELEN);
	slot->state = IOT_STATE_STARTING;
	LWLockRelease(iotpipe_shared->lock);

	if (sl->handle)
	{
		pfree(sl->handle);
		sl->handle = NULL;
	}
	sl->launched_at = GetCurrentTimestamp();
	MemoryContextSwitchTo(launcher_cxt);
	if (!RegisterDynamicBackgroundWorker(&worker, &sl->handle))
	{
		sl->handle = NULL;
		sl->next_launch_at = sl->launched_at + 5 * USECS_PER_SEC;
		iotpipe_set_error("could not register worker \"%s\": no free background worker slot", d->name);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("iotpipe could not start worker \"%s\"", d->name),
				 errhint("Raise max_worker_processes and restart the server.")));
	}
	MemoryContextSwitchTo(pass_cxt);
}

static void
stop_worker(int slotno)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);
	int			pid;

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	pid = slot->pid;
	slot->generation++;
	LWLockRelease(iotpipe_shared->lock);
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

static void
reconcile(PassState *ps)
{
	int			nslots = iotpipe_shared->nslots;
	int		   *slot_of = palloc(sizeof(int) * Max(ps->ndesired, 1));
	bool	   *wanted = palloc0(sizeof(bool) * nslots);
	TimestampTz now = GetCurrentTimestamp();
	int			i,
				s;

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
				IotWorkerSlot *slot = &iotpipe_shared->slots[s];

				if (slot->state != IOT_STATE_FREE && slot->kind == d->kind &&
					slot->key == d->key && slot->index == d->index)
				{
					slot_of[i] = s;
					break;
				}
			}
			if (slot_of[i] < 0)
			{
				for (s = IOT_SLOT_FIRST_KAFKA; s < nslots; s++)
				{
					IotWorkerSlot *slot = &iotpipe_shared->slots[s];

					if (slot->state == IOT_STATE_FREE && !wanted[s])
					{
						slot_of[i] = s;
						/* a fresh slot starts with fresh counters */
						pg_atomic_write_u64(&slot->messages, 0);
						pg_atomic_write_u64(&slot->rows, 0);
						pg_atomic_write_u64(&slot->rejected, 0);
						pg_atomic_write_u64(&slot->batches, 0);
						slot->restarts = 0;
						slot->started_at = 0;
						slot->last_error[0] = '\0';
						slot_local[s].fails = 0;
						slot_local[s].next_launch_at = 0;
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

	/* stop what is not wanted; free slots of removed Kafka workers */
	for (s = 1; s < nslots; s++)
	{
		IotWorkerSlot *slot = &iotpipe_shared->slots[s];

		if (wanted[s] || slot->state == IOT_STATE_FREE)
			continue;
		if (slot->pid != 0)
			stop_worker(s);
		else if (slot->state == IOT_STATE_STARTING && !launch_failed(s))
			stop_worker(s);
		else if (s >= IOT_SLOT_FIRST_KAFKA)
		{
			LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
			slot->state = IOT_STATE_FREE;
			LWLockRelease(iotpipe_shared->lock);
		}
		else if (slot->state != IOT_STATE_STOPPED)
		{
			LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
			slot->state = IOT_STATE_STOPPED;
			LWLockRelease(iotpipe_shared->lock);
		}
	}

	/* start what is wanted and not running; restart what runs old settings */
	for (i = 0; i < ps->ndesired; i++)
	{
		DesiredWorker *d = &ps->desired[i];
		IotWorkerSlot *slot;
		SlotLocal  *sl;

		if (slot_of[i] < 0)
			continue;
		s = slot_of[i];
		slot = &iotpipe_shared->slots[s];
		sl = &slot_local[s];

		if (slot->pid != 0)
		{
			if (slot->config_gen != d->config_gen)
				stop_worker(s);
			else if (slot->kind == d->kind)
				sl->fails = (now - slot->started_at > 30 * USECS_PER_SEC) ? 0 : sl->fails;
			continue;
		}
		if (slot->state == IOT_STATE_STARTING && !launch_failed(s))
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

	for (s = 1; s < iotpipe_shared->nslots; s++)
	{
		IotWorkerSlot *slot = &iotpipe_shared->slots[s];

		if (slot->state == IOT_STATE_FREE)
			continue;
		if (slot->pid != 0 || (slot->state == IOT_STATE_STARTING && !launch_failed(s)))
			stop_worker(s);
		else
		{
			LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
			slot->state = IOT_STATE_FREE;
			LWLockRelease(iotpipe_shared->lock);
		}
	}
}

void
iotpipe_launcher_main(Datum arg)
{
	PassState	ps;
	TimestampTz last_upkeep = 0;
	TimestampTz last_etl = 0;
	bool		was_installed = false;

	iotpipe_worker_init(IOT_SLOT_LAUNCHER, IOT_WORKER_LAUNCHER);
	strlcpy(iotpipe_slot(IOT_SLOT_LAUNCHER)->name, "launcher", IOTPIPE_NAMELEN);
	pgstat_report_appname("iotpipe launcher");

	launcher_cxt = AllocSetContextCreate(TopMemoryContext, "iotpipe launcher", ALLOCSET_DEFAULT_SIZES);
	pass_cxt = AllocSetContextCreate(launcher_cxt, "iotpipe launcher pass", ALLOCSET_DEFAULT_SIZES);
	slot_local = MemoryContextAllocZero(launcher_cxt, sizeof(SlotLocal) * iotpipe_shared->nslots);
	ps.max_desired = iotpipe_shared->nslots - 1;
	ps.desired = MemoryContextAlloc(launcher_cxt, sizeof(DesiredWorker) * ps.max_desired);

	ereport(LOG, (errmsg("iotpipe launcher started in database \"%s\"", iotpipe_database)));

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		int			rc;

		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (RecoveryInProgress())
			iotpipe_set_state(IOT_STATE_RECOVERY, "server in recovery");
		else if (run_guarded(read_desired, &ps, "reading the desired state"))
		{
			now = GetCurrentTimestamp();
			if (!ps.ext_exists)
			{
				char		detail[IOTPIPE_ERRLEN];

				snprintf(detail, sizeof(detail),
						 "extension iotpipe is not installed in database \"%s\"", iotpipe_database);
				iotpipe_set_state(IOT_STATE_WAITING, detail);
				stop_all_workers();
				was_installed = false;
				last_upkeep = 0;
			}
			else
			{
				if (!was_installed)
				{
					iotpipe_set_state(IOT_STATE_RUNNING, "");
					iotpipe_clear_error();
					was_installed = true;
				}
				if (now - last_upkeep >= 60 * USECS_PER_SEC)
				{
					if (run_guarded(partition_upkeep, NULL, "partition upkeep"))
						last_upkeep = now;
				}
				reconcile(&ps);
				run_guarded(alerts_tick, NULL, "alert timers");

				if (iotpipe_etl_interval_s > 0 &&
					now - last_etl >= (int64) iotpipe_etl_interval_s * USECS_PER_SEC)
				{
					static const char *const etl[2] = {"iotpipe.run_etl(timestamptz)",
					"SELECT iotpipe.run_etl()"};
					static const char *const retention[2] = {"iotpipe.apply_retention()",
					"SELECT iotpipe.apply_retention()"};

					last_etl = now;
					if (run_guarded(run_sql_if_exists, (void *) etl, "scheduled ETL") &&
						iotpipe_raw_retention_s > 0)
						run_guarded(run_sql_if_exists, (void *) retention, "raw retention");
				}
			}
		}
		iotpipe_count(0, 0, 0);

		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   iotpipe_launcher_naptime_ms, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	ereport(LOG, (errmsg("iotpipe launcher shutting down")));
	proc_exit(0);
}
