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

/*
 * The position of a generator: how many messages it has made.  Its whole
 * state (every sensor's PRNG, drift, episodes, silences, the turn, the
 * virtual clock) is a function of (nsensors, seed, malformed_ratio,
 * start_ts, interval) and the position, nothing else.
 */
extern int64 simgen_position(SimGen *gen);

/*
 * Advance by n messages without making them: the state is exactly that of
 * a generator that made them.  Costs the signal's arithmetic per reading
 * (no formatting): about 1 us per skipped reading measured (5,062 in 5 ms),
 * so a restart at position 10 million fast-forwards for some 10 s.
 */
extern void simgen_skip(SimGen *gen, int64 n);

#endif							/* IOTPIPE_SIMGEN_H */
