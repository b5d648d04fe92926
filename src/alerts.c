/*-------------------------------------------------------------------------
 *
 * alerts.c
 *	  The alert engine.  (Evaluation of rules arrives with the alerts
 *	  work; for now the hooks the ingest core and the launcher call exist
 *	  and do nothing.)
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"

void
iotpipe_alerts_init(void)
{
}

void
iotpipe_alerts_process_batch(IotBatch *batch)
{
}

void
iotpipe_alerts_tick(void)
{
}
