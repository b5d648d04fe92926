/*-------------------------------------------------------------------------
 *
 * iotpipe.h
 *	  Limits shared by every module of the iotpipe extension.
 *
 * Each module has a header of its own (src/<module>.h); this one holds only
 * the limits every module shares.  See src/README.md for the map.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_H
#define IOTPIPE_H

#include "postgres.h"


#define IOTPIPE_MAX_SENSOR_ID	64
#define IOTPIPE_MAX_MESSAGE		65536
#define IOTPIPE_NAMELEN			64
#define IOTPIPE_ERRLEN			256

#endif							/* IOTPIPE_H */
