/*-------------------------------------------------------------------------
 *
 * simulator.h
 *	  The simulator worker and iotpipe.simulate() (simulator.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SIMULATOR_H
#define IOTPIPE_SIMULATOR_H

#include "iotpipe.h"
#include "fmgr.h"

extern PGDLLEXPORT void iotpipe_simulator_main(Datum arg);

#endif							/* IOTPIPE_SIMULATOR_H */
