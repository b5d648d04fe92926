/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The runtime of iotpipe's background workers: start-up, the one wait
 *	  primitive, the transaction wrapper, and the slot API.
 *
 *	  Every worker (launcher, simulator, Kafka consumer, ETL) starts with
 *	  iotpipe_worker_init(), waits only in iotpipe_worker_wait() and runs
 *	  its transactions through iotpipe_worker_xact().  Signals: SIGTERM and
 *	  SIGHUP use PostgreSQL's standard handlers (postmaster/interrupt.h),
 *	  which set ShutdownRequestPending / ConfigReloadPending and the latch,
 *	  so every wait ends at once, whatever its timeout.
 *
 *	  Slots (shmem.h) are written under IotShared->lock, by the worker that
 *	  owns one (attach, state, errors) and by the launcher through the slot
 *	  API below (identity, generation, launch bookkeeping); the pg_atomic
 *	  counters are the owner's and need no lock.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "status.h"
#include "worker.h"

#include <signal.h>

#include "access/xact.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_database.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

static int	my_generation = 0;

/* the wait set: latch and postmaster death, plus one socket when asked */
static WaitEventSet *wait_set = NULL;
static pgsocket wait_sock = PGINVALID_SOCKET;

/* ---------- start-up ---------- */

static void
worker_detach(int code, Datum arg)
{
	IotWorkerSlot *slot = iotpipe_slot(DatumGetInt32(arg));

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->rate = 0;
		if (slot->kind == IOT_WORKER_ETL)
		{
			/* one run per process: "idle" between runs, the run's outcome kept */
			slot->last_activity = GetCurrentTimestamp();
			if (code != 0 || slot->state == IOT_STATE_RUNNING)
			{
				strlcpy(slot->detail, "last run did not finish", IOTPIPE_ERRLEN);
				if (slot->last_error[0] == '\0')
					strlcpy(slot->last_error,
							"the ETL worker exited during the run (terminated, or see the server log)",
							IOTPIPE_ERRLEN);
				slot->last_error_at = slot->last_activity;
			}
			if (slot->state != IOT_STATE_WAITING)
				slot->state = IOT_STATE_IDLE;
		}
		else
		{
			slot->state = IOT_STATE_STOPPED;
			if (code != 0 && slot->last_error[0] == '\0')
				strlcpy(slot->last_error, "worker exited with an error", IOTPIPE_ERRLEN);
		}
	}
	if (DatumGetInt32(arg) == IOT_SLOT_LAUNCHER)
	{
		iotpipe_shared->launcher_pid = 0;
		iotpipe_shared->launcher_latch = NULL;
	}
	LWLockRelease(iotpipe_shared->lock);
}

/*
 * Claim a slot for the calling worker.  The slot keeps its counters across
 * restarts of the worker by the launcher (they reset with shared memory).
 */
static void
worker_attach(int slotno, IotWorkerKind kind)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	if (slot->pid != 0 && slot->pid != MyProcPid)
	{
		int			other = slot->pid;

		LWLockRelease(iotpipe_shared->lock);
		ereport(LOG,
				(errmsg("iotpipe worker slot %d is already taken by PID %d, exiting", slotno, other)));
		/* a static launcher that exits 0 is never started again */
		proc_exit(slotno == IOT_SLOT_LAUNCHER ? 1 : 0);
	}
	slot->pid = MyProcPid;
	slot->kind = kind;
	slot->state = IOT_STATE_STARTING;
	slot->started_at = GetCurrentTimestamp();
	slot->last_activity = slot->started_at;
	my_generation = slot->generation;
	if (slotno == IOT_SLOT_LAUNCHER)
	{
		/* the launcher's slot is prepared by nobody: it names itself */
		strlcpy(slot->name, "launcher", IOTPIPE_NAMELEN);
		iotpipe_shared->launcher_pid = MyProcPid;
		iotpipe_shared->launcher_latch = &MyProc->procLatch;
	}
	LWLockRelease(iotpipe_shared->lock);

	iotpipe_my_slot = slotno;
	before_shmem_exit(worker_detach, Int32GetDatum(slotno));
}

/* does iotpipe.database exist?  (a transaction on the shared catalogs only) */
static bool
worker_database_exists(void)
{
	bool		found = false;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	/*
	 * A plain scan of pg_database, like the autovacuum launcher's: without a
	 * database only the nailed shared catalogs can be opened (an index scan,
	 * get_database_oid(), would need pg_class).
	 */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database dbform = (Form_pg_database) GETSTRUCT(tup);

		found = strcmp(NameStr(dbform->datname), iotpipe_database) == 0;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return found;
}

/*
 * The launcher before it connects: a connection to a database that does not
 * exist is a FATAL error, and the postmaster would start the launcher again
 * every second, each time with a FATAL line in the log.  So the launcher
 * first connects to no database (shared catalogs only), waits quietly until
 * iotpipe.database appears in pg_database (one LOG line a minute meanwhile,
 * state "waiting" in its slot) and then exits with code 1: the postmaster
 * starts it again a second later, and that start connects (a process cannot
 * change its database).  iotpipe_shared->launcher_db_exists tells the next
 * start which way to go; it is cleared when read, so a database dropped in
 * between costs one FATAL line and the probe again.
 */
static void
launcher_wait_for_database(void)
{
	bool		direct;
	TimestampTz last_log = 0;

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	direct = iotpipe_shared->launcher_db_exists;
	iotpipe_shared->launcher_db_exists = false;
	LWLockRelease(iotpipe_shared->lock);
	if (direct)
		return;

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	worker_attach(IOT_SLOT_LAUNCHER, IOT_WORKER_LAUNCHER);
	pgstat_report_appname("iotpipe launcher");
	for (;;)
	{
		TimestampTz now;

		if (worker_database_exists())
		{
			LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
			iotpipe_shared->launcher_db_exists = true;
			LWLockRelease(iotpipe_shared->lock);
			if (last_log != 0)
				ereport(LOG,
						(errmsg("iotpipe launcher: database \"%s\" exists now, connecting",
								iotpipe_database)));
			proc_exit(1);
		}
		now = GetCurrentTimestamp();
		if (last_log == 0 || now - last_log >= 60 * USECS_PER_SEC)
		{
			char		detail[IOTPIPE_ERRLEN];

			snprintf(detail, sizeof(detail), "database \"%s\" does not exist", iotpipe_database);
			iotpipe_set_state(IOT_STATE_WAITING, detail);
			ereport(LOG,
					(errmsg("iotpipe launcher is waiting for database \"%s\" (iotpipe.database) to be created",
							iotpipe_database),
					 errhint("Create the database and the extension in it, or set iotpipe.database to an existing database and restart the server.")));
			last_log = now;
		}
		iotpipe_count(0, 0, 0);
		(void) iotpipe_worker_wait(1000, PGINVALID_SOCKET);
		if (ShutdownRequestPending)
			proc_exit(1);
	}
}

void
iotpipe_worker_init(int slotno, IotWorkerKind kind)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);

	/*
	 * The ETL worker spends its life in one long statement and never waits
	 * in iotpipe_worker_wait(): SIGTERM is the backend's die(), so the
	 * running query is cancelled at its next interrupt check (lock waits
	 * included) and the worker exits with its transaction rolled back.
	 * SIGINT stays the backend's query cancel (set up by the postmaster).
	 */
	if (kind == IOT_WORKER_ETL)
		pqsignal(SIGTERM, die);
	else
		pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	if (kind == IOT_WORKER_LAUNCHER)
		launcher_wait_for_database();
	BackgroundWorkerInitializeConnection(iotpipe_database, NULL, 0);

	/*
	 * Every worker resolves names through pg_catalog only (and its own temp
	 * schema for relations): an operator or function planted in public, or
	 * in any schema a role can write, is never reached by the workers' SPI
	 * statements, nor by what they call.  PGC_S_OVERRIDE also makes it the
	 * value RESET returns to, whatever ALTER DATABASE / ROLE ... SET says;
	 * the SET clauses of the functions the workers call (source SET) still
	 * apply over it.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	worker_attach(slotno, kind);
}

/* ---------- waiting ---------- */

void
iotpipe_worker_handle_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

static void
build_wait_set(pgsocket sock)
{
	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (sock != PGINVALID_SOCKET)
		AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, sock, NULL, NULL);
	wait_sock = sock;
}

int
iotpipe_worker_wait(long timeout_ms, pgsocket sock)
{
	WaitEvent	events[3];
	int			n,
				i,
				rc = 0;

	/* one set per socket, kept: no epoll set made and closed per wait */
	if (wait_set == NULL || sock != wait_sock)
		build_wait_set(sock);

	n = WaitEventSetWait(wait_set, timeout_ms, events, lengthof(events), PG_WAIT_EXTENSION);
	if (n == 0)
		rc |= WL_TIMEOUT;
	for (i = 0; i < n; i++)
	{
		rc |= events[i].events;
		if (events[i].events & WL_LATCH_SET)
			ResetLatch(MyLatch);
	}
	iotpipe_worker_handle_interrupts();
	return rc;
}

/*
 * True when SIGTERM arrived, the launcher asked this worker to stop (it
 * bumps the slot's generation) or the slot was taken over.
 */
bool
iotpipe_worker_should_stop(void)
{
	IotWorkerSlot *slot;
	bool		stop;

	if (ShutdownRequestPending)
		return true;
	if (iotpipe_my_slot < 0)
		return false;
	slot = iotpipe_slot(iotpipe_my_slot);
	LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
	stop = (slot->generation != my_generation || slot->pid != MyProcPid);
	LWLockRelease(iotpipe_shared->lock);
	return stop;
}

int
iotpipe_my_config_gen(void)
{
	IotWorkerSlot *slot;
	int			gen;

	if (iotpipe_my_slot < 0)
		return 0;
	slot = iotpipe_slot(iotpipe_my_slot);
	LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
	gen = slot->config_gen;
	LWLockRelease(iotpipe_shared->lock);
	return gen;
}

/* ---------- transactions ---------- */

/*
 * Run fn(arg) in a transaction of its own, with a snapshot (and SPI
 * connected when spi).  Never throws: on error the transaction is rolled
 * back, *err gets the error message (in the caller's memory context) and
 * false is returned.  Returns in the caller's memory context either way.
 */
bool
iotpipe_run_xact(void (*fn) (void *), void *arg, const char *what, bool spi, char **err)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (spi && SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, what);
		fn(arg);
		if (spi)
			SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		if (err)
			*err = MemoryContextStrdup(caller, edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	return ok;
}

bool
iotpipe_worker_xact(void (*fn) (void *), void *arg, const char *what, bool spi)
{
	char	   *err = NULL;
	char		name[IOTPIPE_NAMELEN] = "";

	if (iotpipe_run_xact(fn, arg, what, spi, &err))
		return true;
	if (iotpipe_my_slot >= 0)
	{
		LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
		strlcpy(name, iotpipe_slot(iotpipe_my_slot)->name, sizeof(name));
		LWLockRelease(iotpipe_shared->lock);
	}
	ereport(LOG, (errmsg("iotpipe %s: %s failed: %s", name, what, err)));
	iotpipe_set_error("%s: %s", what, err);
	pfree(err);
	return false;
}

/* ---------- the slot API (launcher) ---------- */

void
iotpipe_slot_read(int slotno, IotWorkerSlot *copy)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);

	LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
	memcpy(copy, slot, offsetof(IotWorkerSlot, messages));
	LWLockRelease(iotpipe_shared->lock);
	pg_atomic_init_u64(&copy->messages, pg_atomic_read_u64(&slot->messages));
	pg_atomic_init_u64(&copy->rows, pg_atomic_read_u64(&slot->rows));
	pg_atomic_init_u64(&copy->rejected, pg_atomic_read_u64(&slot->rejected));
	pg_atomic_init_u64(&copy->batches, pg_atomic_read_u64(&slot->batches));
}

void
iotpipe_slot_prepare(int slotno, IotWorkerKind kind, int key, int index, int config_gen,
					 const char *name)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	if (slot->state != IOT_STATE_FREE && slot->started_at != 0)
		slot->restarts++;
	slot->kind = kind;
	slot->key = key;
	slot->index = index;
	slot->config_gen = config_gen;
	strlcpy(slot->name, name, IOTPIPE_NAMELEN);
	slot->state = IOT_STATE_STARTING;
	LWLockRelease(iotpipe_shared->lock);
}

void
iotpipe_slot_reset(int slotno)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	pg_atomic_write_u64(&slot->messages, 0);
	pg_atomic_write_u64(&slot->rows, 0);
	pg_atomic_write_u64(&slot->rejected, 0);
	pg_atomic_write_u64(&slot->batches, 0);
	slot->restarts = 0;
	slot->started_at = 0;
	slot->last_error[0] = '\0';
	slot->last_error_at = 0;
	slot->detail[0] = '\0';
	slot->rate = 0;
	LWLockRelease(iotpipe_shared->lock);
}

int
iotpipe_slot_request_stop(int slotno)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);
	int			pid;

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	pid = slot->pid;
	slot->generation++;
	LWLockRelease(iotpipe_shared->lock);
	return pid;
}
