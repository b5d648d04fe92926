/*-------------------------------------------------------------------------
 *
 * alerts.h
 *	  The alert engine, run inside the ingest transaction (alerts.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ALERTS_H
#define IOTPIPE_ALERTS_H

#include "jsonmsg.h"
#include "alert_timer.h"		/* iotpipe_alerts_tick(), for the launcher */

/* evaluate the accepted readings of a batch, in input order (SPI connected) */
extern void iotpipe_alerts_process(const IotReading *readings, int n);
extern void iotpipe_alerts_init(void);

#endif							/* IOTPIPE_ALERTS_H */
