/*-------------------------------------------------------------------------
 *
 * alert_timer.h
 *	  The alert engine's timers, run by the launcher (alert_timer.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ALERT_TIMER_H
#define IOTPIPE_ALERT_TIMER_H

#include "iotpipe.h"

extern void iotpipe_alerts_tick(void);	/* timers (offline); in a transaction */

#endif							/* IOTPIPE_ALERT_TIMER_H */
