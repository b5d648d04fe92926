/*-------------------------------------------------------------------------
 *
 * sensors.h
 *	  iotpipe.sensors upkeep, throttled (sensors.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SENSORS_H
#define IOTPIPE_SENSORS_H

#include "jsonmsg.h"

extern void iotpipe_sensors_note(IotReading *readings, int n);
extern void iotpipe_sensors_write(bool all);	/* SPI connected */
extern bool iotpipe_sensors_pending(void);

#endif							/* IOTPIPE_SENSORS_H */
