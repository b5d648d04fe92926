/*-------------------------------------------------------------------------
 *
 * alert_write.h
 *	  Fires and resolves of the alert engine: queued per batch, written to
 *	  iotpipe.alerts through SPI, notified on iotpipe_alerts (alert_write.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ALERT_WRITE_H
#define IOTPIPE_ALERT_WRITE_H

#include "alert_eval.h"

/* start the write queue of a batch (after iotpipe_alert_cache_refresh) */
extern void iotpipe_alert_write_begin(void);

/* queue one fire or resolve: the AlertEmit of iotpipe_alert_evaluate() */
extern void iotpipe_alert_queue(const AlertRule *r, SensorState *se, RuleState *st, bool fire,
								bool value_null, double value, bool reading_null,
								double reading, TimestampTz ts, const FeatExplain *explain);

/* write the queued events round by round, then notify them in order (SPI connected) */
extern void iotpipe_alert_flush(void);

#endif							/* IOTPIPE_ALERT_WRITE_H */
