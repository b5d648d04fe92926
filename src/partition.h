/*-------------------------------------------------------------------------
 *
 * partition.h
 *	  Daily partitions of iotpipe.readings (partition.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_PARTITION_H
#define IOTPIPE_PARTITION_H

#include "iotpipe.h"
#include "datatype/timestamp.h"

extern void iotpipe_ensure_partitions_for_days(int32 *days, int ndays);
extern int	iotpipe_create_partitions_range(int32 from_day, int32 to_day);
extern int32 iotpipe_ts_day(TimestampTz ts);

#endif							/* IOTPIPE_PARTITION_H */
