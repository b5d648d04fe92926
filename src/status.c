/*-------------------------------------------------------------------------
 *
 * status.c
 *	  How workers publish what they do (state, counters, rate, last error)
 *	  into their shared-memory slot, and iotpipe.worker_status(), the
 *	  function behind the iotpipe.status view.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "status.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"


/* rate smoothing state, local to the owning worker */
static TimestampTz rate_last_at = 0;
static uint64 rate_last_messages = 0;

const char *
iotpipe_state_name(IotWorkerState state)
{
	switch (state)
	{
		case IOT_STATE_FREE:
			return "free";
		case IOT_STATE_STARTING:
			return "starting";
		case IOT_STATE_WAITING:
			return "waiting";
		case IOT_STATE_IDLE:
			return "idle";
		case IOT_STATE_RUNNING:
			return "running";
		case IOT_STATE_BACKOFF:
			return "backoff";
		case IOT_STATE_RECOVERY:
			return "recovery";
		case IOT_STATE_STOPPED:
			return "stopped";
	}
	return "unknown";
}

const char *
iotpipe_kind_name(IotWorkerKind kind)
{
	switch (kind)
	{
		case IOT_WORKER_LAUNCHER:
			return "launcher";
		case IOT_WORKER_SIMULATOR:
			return "simulator";
		case IOT_WORKER_KAFKA:
			return "kafka";
		case IOT_WORKER_ETL:
			return "etl";
		case IOT_WORKER_NOTIFIER:
			return "notifier";
	}
	return "unknown";
}

void
iotpipe_slot_set_state(int slotno, IotWorkerState state, const char *detail)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	slot->state = state;
	if (detail)
		strlcpy(slot->detail, detail, IOTPIPE_ERRLEN);
	LWLockRelease(iotpipe_shared->lock);
}

void
iotpipe_slot_set_error(int slotno, const char *error)
{
	IotWorkerSlot *slot = iotpipe_slot(slotno);

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	strlcpy(slot->last_error, error, IOTPIPE_ERRLEN);
	slot->last_error_at = GetCurrentTimestamp();
	LWLockRelease(iotpipe_shared->lock);
}

void
iotpipe_set_state(IotWorkerState state, const char *detail)
{
	if (iotpipe_my_slot >= 0)
		iotpipe_slot_set_state(iotpipe_my_slot, state, detail);
}

void
iotpipe_set_error(const char *fmt,...)
{
	char		buf[IOTPIPE_ERRLEN];
	va_list		ap;

	if (iotpipe_my_slot < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	iotpipe_slot_set_error(iotpipe_my_slot, buf);
}

void
iotpipe_clear_error(void)
{
	IotWorkerSlot *slot;

	if (iotpipe_my_slot < 0)
		return;
	slot = iotpipe_slot(iotpipe_my_slot);
	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	slot->last_error[0] = '\0';
	LWLockRelease(iotpipe_shared->lock);
}

void
iotpipe_count(uint64 messages, uint64 rows, uint64 rejected)
{
	IotWorkerSlot *slot;

	if (iotpipe_my_slot < 0)
		return;
	slot = iotpipe_slot(iotpipe_my_slot);
	pg_atomic_fetch_add_u64(&slot->messages, messages);
	pg_atomic_fetch_add_u64(&slot->rows, rows);
	pg_atomic_fetch_add_u64(&slot->rejected, rejected);
	pg_atomic_fetch_add_u64(&slot->batches, 1);
	/* last_activity is a plain store of an aligned 8-byte value */
	slot->last_activity = GetCurrentTimestamp();
}

/*
 * Recompute the smoothed message rate; call it about once a second.
 */
void
iotpipe_update_rate(void)
{
	IotWorkerSlot *slot;
	TimestampTz now = GetCurrentTimestamp();
	uint64		msgs;
	double		secs;
	double		inst;

	if (iotpipe_my_slot < 0)
		return;
	slot = iotpipe_slot(iotpipe_my_slot);
	if (rate_last_at == 0)
	{
		/* the first call after the worker attached: start measuring */
		rate_last_at = now;
		rate_last_messages = pg_atomic_read_u64(&slot->messages);
		return;
	}
	secs = (double) (now - rate_last_at) / USECS_PER_SEC;
	if (secs < 0.5)
		return;
	msgs = pg_atomic_read_u64(&slot->messages);
	inst = (double) (msgs - rate_last_messages) / secs;

	LWLockAcquire(iotpipe_shared->lock, LW_EXCLUSIVE);
	/* a short time constant (about 3 s) keeps it responsive but readable */
	if (slot->rate == 0)
		slot->rate = inst;
	else
		slot->rate = 0.6 * slot->rate + 0.4 * inst;
	LWLockRelease(iotpipe_shared->lock);

	rate_last_at = now;
	rate_last_messages = msgs;
}

void
iotpipe_wake_launcher_now(void)
{
	if (iotpipe_shared == NULL)
		return;
	LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
	if (iotpipe_shared->launcher_latch)
		SetLatch(iotpipe_shared->launcher_latch);
	LWLockRelease(iotpipe_shared->lock);
}

PG_FUNCTION_INFO_V1(iotpipe_worker_status);
Datum
iotpipe_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	iotpipe_require_preload();
	InitMaterializedSRF(fcinfo, 0);
	/* the slots describe the workers of iotpipe.database: none run here */
	if (!iotpipe_in_worker_database())
		return (Datum) 0;

	for (i = 0; i < iotpipe_shared->nslots; i++)
	{
		IotWorkerSlot *slot = &iotpipe_shared->slots[i];
		IotWorkerSlot copy;
		Datum		values[16];
		bool		nulls[16] = {0};
		const char *kind;

		LWLockAcquire(iotpipe_shared->lock, LW_SHARED);
		memcpy(&copy, slot, offsetof(IotWorkerSlot, messages));
		LWLockRelease(iotpipe_shared->lock);
		if (copy.state == IOT_STATE_FREE)
			continue;

		kind = iotpipe_kind_name(copy.kind);
		values[0] = CStringGetTextDatum(copy.name);
		values[1] = CStringGetTextDatum(kind);
		if (copy.pid != 0)
			values[2] = Int32GetDatum(copy.pid);
		else
			nulls[2] = true;
		values[3] = CStringGetTextDatum(iotpipe_state_name(copy.state));
		if (copy.started_at != 0)
			values[4] = TimestampTzGetDatum(copy.started_at);
		else
			nulls[4] = true;
		values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->messages));
		values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->rows));
		values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->rejected));
		values[8] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->batches));
		values[9] = Float8GetDatum(copy.rate);
		if (copy.last_error[0])
			values[10] = CStringGetTextDatum(copy.last_error);
		else
			nulls[10] = true;
		if (copy.last_error_at != 0 && copy.last_error[0])
			values[11] = TimestampTzGetDatum(copy.last_error_at);
		else
			nulls[11] = true;
		if (copy.last_activity != 0)
			values[12] = TimestampTzGetDatum(copy.last_activity);
		else
			nulls[12] = true;
		values[13] = Int32GetDatum(copy.restarts);
		if (copy.detail[0])
			values[14] = CStringGetTextDatum(copy.detail);
		else
			nulls[14] = true;
		/* 0.1.0's SQL declares 15 columns: the library may be newer */
		values[15] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->notifies_skipped));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Changes of desired state (simulator, sources) are only visible to the
 * launcher once committed: wake it at commit, not before.
 */
static bool wake_at_commit = false;
static bool wake_callback_registered = false;

static void
iotpipe_wake_xact_callback(XactEvent event, void *arg)
{
	if (!wake_at_commit)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		wake_at_commit = false;
		iotpipe_wake_launcher_now();
	}
	else if (event == XACT_EVENT_ABORT)
		wake_at_commit = false;
}

PG_FUNCTION_INFO_V1(iotpipe_wake_launcher);
Datum
iotpipe_wake_launcher(PG_FUNCTION_ARGS)
{
	iotpipe_require_preload();
	if (!wake_callback_registered)
	{
		RegisterXactCallback(iotpipe_wake_xact_callback, NULL);
		wake_callback_registered = true;
	}
	wake_at_commit = true;
	PG_RETURN_VOID();
}
