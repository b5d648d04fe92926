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
