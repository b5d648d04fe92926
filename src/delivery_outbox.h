/*-------------------------------------------------------------------------
 *
 * delivery_outbox.h
 *	  The alert engine's outbox write and the notifier's wake-up
 *	  (delivery_outbox.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_DELIVERY_OUTBOX_H
#define IOTPIPE_DELIVERY_OUTBOX_H

#include "iotpipe.h"

#include "executor/spi.h"

/* is any route to an enabled receiver configured?  (cached; SPI connected) */
extern bool iotpipe_outbox_routes_exist(void);

/*
 * Route n alert events (arrays of int8 alert ids and texts; locations may
 * be NULL) and write their notifications, in this transaction; the notifier
 * is woken when it commits.  SPI connected.
 */
extern void iotpipe_outbox_enqueue(int n, Datum *alert_ids, Datum *events, Datum *rules,
								   Datum *severities, Datum *locations, bool *locnulls,
								   Datum *sensors, Datum *payloads);

/* set the notifier's latch now / when this transaction commits */
extern void iotpipe_notifier_wake_now(void);
extern void iotpipe_notifier_wake_at_commit(void);

#endif							/* IOTPIPE_DELIVERY_OUTBOX_H */
