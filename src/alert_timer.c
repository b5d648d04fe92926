/*-------------------------------------------------------------------------
 *
 * alert_timer.c
 *	  The alert engine's timers: what no reading triggers.  The launcher
 *	  calls iotpipe_alerts_tick() on every pass, in a transaction.
 *
 *	  The work is SQL (iotpipe._alert_timers(), in the install script):
 *	  offline rules fire for sensors that sent nothing for their
 *	  for_duration, and firing alerts held back by a silence that has
 *	  ended are notified now.  It writes iotpipe.alerts and notifies with
 *	  the engine's payload (iotpipe._alert_payload, alert_write.c); the
 *	  trigger on iotpipe.alerts tells the ingesting backends, whose copy of
 *	  the firing set reloads (alert_cache.c).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alert_timer.h"

#include "executor/spi.h"

void
iotpipe_alerts_tick(void)
{
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute("SELECT iotpipe._alert_timers()", false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "iotpipe._alert_timers() failed: %s", SPI_result_code_string(ret));
	SPI_finish();
}
