/*-------------------------------------------------------------------------
 *
 * rowguard.h
 *	  Writing a batch of rows so that the rows the database refuses (a
 *	  constraint, a trigger that raises) are set aside instead of failing
 *	  the batch (rowguard.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ROWGUARD_H
#define IOTPIPE_ROWGUARD_H

#include "iotpipe.h"

/* write rows [lo, hi) of the caller's batch; may throw */
typedef void (*RowGuardWrite) (void *arg, int lo, int hi);
/* row i was refused; reason is palloc'd in the caller's memory context */
typedef void (*RowGuardReject) (void *arg, int i, const char *reason);

/*
 * Write rows 0..n-1 with write(), in subtransactions of the current
 * transaction.  When the database refuses a row (an integrity constraint,
 * a data exception, an exception raised by a trigger), the failing range
 * is rolled back and bisected until each refused row is alone: reject() is
 * called for it, every other row is written once, in input order.  Any
 * other error (locks, disk, cancel, a broken trigger) is thrown as is.
 * Returns the number of rows rejected.
 */
extern int	iotpipe_rowguard_write(int n, RowGuardWrite write, RowGuardReject reject, void *arg);

#endif							/* IOTPIPE_ROWGUARD_H */
