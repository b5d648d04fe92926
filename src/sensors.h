/*-------------------------------------------------------------------------
 *
 * sensors.h
 *	  iotpipe.sensors upkeep, one upsert per batch (sensors.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SENSORS_H
#define IOTPIPE_SENSORS_H

#include "jsonmsg.h"

/* the sensors of a batch's landed readings, in its transaction; SPI connected */
extern void iotpipe_sensors_upsert(const IotReading *readings, int n);

#endif							/* IOTPIPE_SENSORS_H */
