/*-------------------------------------------------------------------------
 *
 * simgen.h
 *	  The deterministic sensor signal generator (simgen.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SIMGEN_H
#define IOTPIPE_SIMGEN_H

#include "iotpipe.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"

typedef struct SimGen SimGen;
extern SimGen *simgen_create(int nsensors, int64 seed, double malformed_ratio,
							 TimestampTz start_ts, double interval_s);
/* next message into buf; *ts gets its event time; returns true if malformed */
extern bool simgen_next(SimGen *gen, StringInfo buf, TimestampTz now);
extern int	simgen_sensor_of_last(SimGen *gen);
extern const char *simgen_sensor_id(SimGen *gen, int sensor);
extern void simgen_set_text_safe(SimGen *gen, bool text_safe);

#endif							/* IOTPIPE_SIMGEN_H */
