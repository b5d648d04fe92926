/*-------------------------------------------------------------------------
 *
 * delivery_outbox.c
 *	  The outbox write of the alert engine and the notifier's wake-up.
 *
 *	  alert_write.c hands over each batch's notified fires and resolves
 *	  (after its NOTIFYs, in the same transaction): one call of
 *	  iotpipe._outbox_enqueue() (src/sql/60_delivery.sql) matches them
 *	  against the routes, set-based, and writes iotpipe.notifications.  A
 *	  batch costs nothing more when no route exists: whether one exists is
 *	  cached per backend and read again when IotShared->rules_version
 *	  moves (the triggers on routes and receivers bump it at commit, as for
 *	  alert rules).  The counter is read before the query, which takes a
 *	  new snapshot (read_only = false), so a change committed in between is
 *	  seen now or reloaded next time.
 *
 *	  The notifier sleeps on its latch: a transaction that wrote rows sets
 *	  it when it commits (never before: the rows must be visible), found
 *	  through the notifier's slot pid.  No NOTIFY is involved.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "delivery_outbox.h"
#include "shmem.h"
#include "spiutil.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"

static uint64 routes_version = 0;	/* 0 = not known */
static bool routes_exist = false;
static SPIPlanPtr exist_plan = NULL;
static SPIPlanPtr enqueue_plan = NULL;

static bool wake_pending = false;
static bool callback_registered = false;

bool
iotpipe_outbox_routes_exist(void)
{
	uint64		v = iotpipe_shared ? pg_atomic_read_u64(&iotpipe_shared->rules_version) : 0;
	int			ret;

	if (v != 0 && v == routes_version)
		return routes_exist;
	if (exist_plan == NULL)
		exist_plan = iotpipe_keep_plan("SELECT EXISTS (SELECT FROM iotpipe.routes r "
									   "  JOIN iotpipe.receivers v ON v.name = r.receiver "
									   " WHERE v.enabled)", 0, NULL, 0);
	ret = SPI_execute_plan(exist_plan, NULL, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read iotpipe.routes: %s", SPI_result_code_string(ret));
	{
		bool		isnull;

		routes_exist = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	routes_version = v;
	return routes_exist;
}

void
iotpipe_outbox_enqueue(int n, Datum *alert_ids, Datum *events, Datum *rules, Datum *severities,
					   Datum *locations, bool *locnulls, Datum *sensors, Datum *payloads)
{
	Datum		args[7];
	int			ret;

	if (n == 0)
		return;
	if (enqueue_plan == NULL)
	{
		Oid			types[7] = {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};

		enqueue_plan = iotpipe_keep_plan("SELECT iotpipe._outbox_enqueue($1, $2, $3, $4, $5, $6, $7)",
										 7, types, 0);
	}
	args[0] = iotpipe_byval_array(alert_ids, NULL, n, INT8OID);
	args[1] = iotpipe_text_array(events, NULL, n);
	args[2] = iotpipe_text_array(rules, NULL, n);
	args[3] = iotpipe_text_array(severities, NULL, n);
	args[4] = iotpipe_text_array(locations, locnulls, n);
	args[5] = iotpipe_text_array(sensors, NULL, n);
	args[6] = iotpipe_text_array(payloads, NULL, n);
	ret = SPI_execute_plan(enqueue_plan, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not write iotpipe.notifications: %s", SPI_result_code_string(ret));
	SPI_freetuptable(SPI_tuptable);
}

/* ---------- waking the notifier ---------- */

void
iotpipe_notifier_wake_now(void)
{
	int			i;
	int			pid = 0;
	PGPROC	   *proc;

	if (iotpipe_shared == NULL)
		return;
	LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
	for (i = 0; i < iotpipe_shared->nslots; i++)
	{
		IotWorkerSlot *slot = &iotpipe_shared->slots[i];

		if (slot->kind == IOT_WORKER_NOTIFIER && slot->pid != 0 && slot->state != IOT_STATE_FREE)
		{
			pid = slot->pid;
			break;
		}
	}
	LWLockRelease(iotpipe_shared->lock);
	if (pid == 0)
		return;
	proc = BackendPidGetProc(pid);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

static void
wake_xact_callback(XactEvent event, void *arg)
{
	if (!wake_pending)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		wake_pending = false;
		iotpipe_notifier_wake_now();
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		wake_pending = false;
}

void
iotpipe_notifier_wake_at_commit(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		callback_registered = true;
	}
	wake_pending = true;
}

PG_FUNCTION_INFO_V1(iotpipe_wake_notifier);
Datum
iotpipe_wake_notifier(PG_FUNCTION_ARGS)
{
	iotpipe_notifier_wake_at_commit();
	PG_RETURN_VOID();
}
