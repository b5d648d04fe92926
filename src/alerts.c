/*-------------------------------------------------------------------------
 *
 * alerts.c
 *	  The alert engine: rules evaluated in C on every accepted reading,
 *	  inside the ingest transaction (iotpipe_alerts_process), plus the
 *	  timers the launcher runs (alert_timer.c: offline sensors, silences
 *	  that ended).
 *
 *	  A batch goes through the modules in this order:
 *	    1. alert_cache.c reloads what changed since this backend last
 *	       looked: rules and silences, the firing alerts;
 *	    2. per reading, alert_cache.c finds the sensor's state (built for
 *	       the current rules, synced with the firing set) and alert_eval.c
 *	       evaluates the reading against the rules in its scope: pure C,
 *	       the hot path, no SPI and no allocation;
 *	    3. each fire and resolve it decides is queued by alert_write.c,
 *	       which writes the queue to iotpipe.alerts at the end of the batch
 *	       (or before a sensor's states are rebuilt: queued events point
 *	       into them) and queues NOTIFY iotpipe_alerts for each.
 *	  Everything commits or aborts with the readings.
 *
 *	  SQL is only touched to write fires and resolves, and to reload.
 *	  Readings older than (or as old as) the newest one seen for a sensor
 *	  and metric are stored by the ingest core but ignored here, so late
 *	  data never flips an alert backwards.  Reference: docs/alerts.md.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alert_cache.h"
#include "alert_eval.h"
#include "alert_write.h"
#include "alerts.h"

void
iotpipe_alerts_init(void)
{
	iotpipe_alert_cache_init();
}

void
iotpipe_alerts_process(const IotReading *readings, int n)
{
	int			i;

	if (n == 0)
		return;
	if (iotpipe_alert_cache_refresh() == 0)
		return;
	iotpipe_alert_write_begin();
	for (i = 0; i < n; i++)
	{
		const IotReading *rd = &readings[i];
		SensorState *se = iotpipe_alert_sensor(rd);

		if (unlikely(!iotpipe_alert_sensor_current(se)))
		{
			if (iotpipe_alert_sensor_stale(se))
				iotpipe_alert_flush();	/* queued events point into the old states */
			iotpipe_alert_sensor_sync(se);
		}
		iotpipe_alert_evaluate(&iotpipe_alert_rules, se, rd, iotpipe_alert_queue);
	}
	iotpipe_alert_flush();
}
