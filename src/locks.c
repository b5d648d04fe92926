/*-------------------------------------------------------------------------
 *
 * locks.c
 *	  The extension's own locks.  0.1.0 serialized the ETL and partition
 *	  creation on advisory keys that any role able to connect could take
 *	  with pg_advisory_lock(), and then waited for them forever.  These
 *	  locks are advisory lock tags too (so pg_locks shows them, locktype
 *	  advisory, objsubid 0x6970), but with a locktag_field4 that the SQL
 *	  functions never use (pg_advisory_* set 1 for a bigint key, 2 for two
 *	  int4 keys): no SQL statement can take them, only this library.
 *
 *	  The wait is bounded: a conditional acquire, retried on a short sleep
 *	  until the deadline, with interrupts served.
 *
 *	  iotpipe._etl_lock() is run_etl's, reset_warehouse's and
 *	  apply_retention's entry (EXECUTE for the owner only: those functions
 *	  are SECURITY DEFINER); iotpipe._alert_rules_lock() the rule-limit
 *	  trigger's (it runs as the role changing rules: iotpipe_admin).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "locks.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/timestamp.h"

/* 'ip': what pg_advisory_* never put in locktag_field4 (they use 1 and 2) */
#define IOT_LOCKTAG_FIELD4 0x6970
#define IOT_LOCK_KEY 0x696f7470	/* 'iotp' */

bool
iotpipe_lock_xact(IotLock which, int timeout_ms)
{
	LOCKTAG		tag;
	TimestampTz deadline;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, IOT_LOCK_KEY, (uint32) which, IOT_LOCKTAG_FIELD4);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(timeout_ms, 0));
	for (;;)
	{
		TimestampTz now;
		long		left_ms;

		if (LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
			return true;
		now = GetCurrentTimestamp();
		if (now >= deadline)
			return false;
		left_ms = (long) ((deadline - now + 999) / 1000);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(left_ms, 20L), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * iotpipe._etl_lock(): the ETL's lock until the end of the transaction,
 * waiting at most iotpipe.etl_lock_timeout.
 */
PG_FUNCTION_INFO_V1(iotpipe_etl_lock);
Datum
iotpipe_etl_lock(PG_FUNCTION_ARGS)
{
	if (!iotpipe_lock_xact(IOT_LOCK_ETL, iotpipe_etl_lock_timeout_ms))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("another run_etl is in progress"),
				 errdetail("run_etl(), reset_warehouse() and apply_retention() run one at a time; "
						   "this call waited %d ms (iotpipe.etl_lock_timeout) for the one in progress.",
						   iotpipe_etl_lock_timeout_ms),
				 errhint("Try again when it has finished, or raise iotpipe.etl_lock_timeout.")));
	PG_RETURN_VOID();
}

/*
 * iotpipe._alert_rules_lock(): serializes the enabled-rules limit check of
 * concurrent statements (20_alerts.sql), waiting at most 10 s.
 */
PG_FUNCTION_INFO_V1(iotpipe_alert_rules_lock);
Datum
iotpipe_alert_rules_lock(PG_FUNCTION_ARGS)
{
	if (!iotpipe_lock_xact(IOT_LOCK_ALERT_RULES, 10000))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("another transaction is changing alert rules"),
				 errdetail("Statements that add or enable rules check the rule limit one at a time; "
						   "the one in progress did not commit within 10 s."),
				 errhint("Try again when it has committed.")));
	PG_RETURN_VOID();
}
