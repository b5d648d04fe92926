/*-------------------------------------------------------------------------
 *
 * partition.h
 *	  The partitions of iotpipe.readings (partition.c): daily for recent
 *	  data, coarser for old data, made without blocking readers or writers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_PARTITION_H
#define IOTPIPE_PARTITION_H

#include "iotpipe.h"
#include "datatype/timestamp.h"

/* days before today that get daily partitions; older data gets coarser ones */
#define IOTPIPE_PARTITION_DAILY_DAYS 31
/* new partitions one transaction of the ingest path may make */
#define IOTPIPE_PARTITION_MAX_NEW 16
/* partitions one transaction of the ingest path may write into */
#define IOTPIPE_PARTITION_MAX_TOUCHED 256

/* the daily partitions for from_day..to_day (days since 2000-01-01) */
extern int	iotpipe_create_partitions_range(int32 from_day, int32 to_day);
extern int32 iotpipe_ts_day(TimestampTz ts);

/* the ingest path: is there (or can there be now) a partition for ts? */
typedef struct IotPartCheck IotPartCheck;
extern IotPartCheck *iotpipe_partcheck_begin(void);
/* NULL when a partition takes ts, else the reason the reading is held */
extern const char *iotpipe_partcheck(IotPartCheck *pc, TimestampTz ts);
extern void iotpipe_partcheck_end(IotPartCheck *pc);

#endif							/* IOTPIPE_PARTITION_H */
