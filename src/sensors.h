/*-------------------------------------------------------------------------
 *
 * sensors.h
 *	  iotpipe.sensors upkeep, in each batch's transaction (sensors.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SENSORS_H
#define IOTPIPE_SENSORS_H

#include "jsonmsg.h"

/* the sensors of a batch's landed readings, in its transaction; SPI connected */
extern void iotpipe_sensors_upsert(const IotReading *readings, int n);	/* at once */
extern void iotpipe_sensors_defer(const IotReading *readings, int n);	/* workers: a delta */
/* a stopping worker: fold its own deltas; SPI connected */
extern void iotpipe_sensors_fold_own(void);
/* the launcher: fold deltas older than iotpipe.sensor_refresh; SPI connected */
extern void iotpipe_sensors_fold_stale(void);

#endif							/* IOTPIPE_SENSORS_H */
