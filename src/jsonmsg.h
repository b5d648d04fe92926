/*-------------------------------------------------------------------------
 *
 * jsonmsg.h
 *	  Parse and validate one contract message (jsonmsg.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_JSONMSG_H
#define IOTPIPE_JSONMSG_H

#include "iotpipe.h"
#include "datatype/timestamp.h"

/*
 * The values a reading may carry (README.md, "Message contract"): below
 * absolute zero is impossible, and above 10,000 degrees C no sensor
 * survives (the hottest industrial processes, arc furnaces and plasma
 * torches measured by pyrometers, stay below 5,000 degrees C; 140 degrees C is
 * an ordinary alarm).  Humidity is a relative humidity.  Everything inside
 * these bounds is accepted and every later step (ETL, alert statistics)
 * computes with it without overflowing; the ETL flags values outside them
 * (inserted into iotpipe.readings by hand) as outliers.
 */
#define IOTPIPE_TEMPERATURE_MIN		(-273.15)
#define IOTPIPE_TEMPERATURE_MAX		10000.0
#define IOTPIPE_HUMIDITY_MIN		0.0
#define IOTPIPE_HUMIDITY_MAX		100.0

typedef struct IotReading
{
	char		sensor_id[IOTPIPE_MAX_SENSOR_ID * 4 + 1];	/* UTF-8, NUL-terminated */
	int			sensor_id_len;
	TimestampTz ts;
	bool		has_temperature;
	bool		has_humidity;
	double		temperature;
	double		humidity;
	char	   *location;		/* palloc'd in the batch context, or NULL */
	int			location_len;
} IotReading;

/*
 * Parse one message.  Returns NULL when it is a valid contract message (and
 * fills *out), or a static/palloc'd reason string when it is rejected.
 * Never throws for bad input.  now is the reference for "in the future".
 */
extern const char *iotpipe_parse_message(const char *data, size_t len, IotReading *out,
										 TimestampTz now, MemoryContext strcxt);

#endif							/* IOTPIPE_JSONMSG_H */
