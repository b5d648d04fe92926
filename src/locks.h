/*-------------------------------------------------------------------------
 *
 * locks.h
 *	  The extension's own locks (locks.c): advisory lock tags that the SQL
 *	  pg_advisory_* functions cannot name, taken with a bounded wait.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_LOCKS_H
#define IOTPIPE_LOCKS_H

#include "iotpipe.h"

typedef enum IotLock
{
	IOT_LOCK_ETL = 1,			/* run_etl, reset_warehouse, apply_retention */
	IOT_LOCK_PARTITIONS = 2,	/* creating partitions of iotpipe.readings */
	IOT_LOCK_ALERT_RULES = 3	/* the enabled-rules limit check */
} IotLock;

/*
 * Take the lock in exclusive mode until the end of the transaction, waiting
 * at most timeout_ms (0: do not wait).  Returns false when it is still held
 * by another backend then; never waits longer.  Interrupts are served while
 * waiting.
 */
extern bool iotpipe_lock_xact(IotLock which, int timeout_ms);

#endif							/* IOTPIPE_LOCKS_H */
