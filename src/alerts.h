/*-------------------------------------------------------------------------
 *
 * alerts.h
 *	  The alert engine, run inside the ingest transaction (alerts.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ALERTS_H
#define IOTPIPE_ALERTS_H

#include "ingest.h"

extern void iotpipe_alerts_process_batch(IotBatch *batch);
extern void iotpipe_alerts_tick(void);	/* timers (offline); in a transaction */
extern void iotpipe_alerts_init(void);

#endif							/* IOTPIPE_ALERTS_H */
