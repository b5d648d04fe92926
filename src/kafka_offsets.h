/*-------------------------------------------------------------------------
 *
 * kafka_offsets.h
 *	  What a Kafka consumer worker reads and writes in PostgreSQL
 *	  (kafka_offsets.c): its source, the stored offsets it assigns its
 *	  partitions at, the batch transaction with the fenced offsets upsert,
 *	  and the watermarks behind iotpipe.kafka_lag.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_KAFKA_OFFSETS_H
#define IOTPIPE_KAFKA_OFFSETS_H

#include "iotpipe.h"
#include "ingest.h"

#include <librdkafka/rdkafka.h>

/* a row of iotpipe.kafka_sources, as the worker uses it */
typedef struct IotKafkaSource
{
	bool		enabled;
	char	   *brokers;
	char	   *topic;			/* NULL: the source is gone */
	char	   *group_id;
	int			nopts;			/* options: librdkafka properties */
	char	  **keys;
	char	  **vals;			/* NULL where the value comes from a file */
	char	  **files;			/* secret file of the option, or NULL */
	bool		start_at_end;	/* partitions without a stored offset */
} IotKafkaSource;

/* what the worker knows of one partition of its topic */
typedef struct IotKafkaPart
{
	bool		assigned;
	bool		in_batch;
	int64		committed;		/* next_offset in the table as we know it; -1 none */
	int64		pos;			/* next offset we accept; -1 any */
	int64		batch_next;		/* next_offset after the pending batch */
	int64		lo;				/* cached watermarks; -1 unknown */
	int64		hi;
	int64		hi_written;
} IotKafkaPart;

/* the partitions, indexed by partition number */
typedef struct IotKafkaParts
{
	IotKafkaPart *p;
	int			n;
} IotKafkaParts;

/* read source source_id into *src (strings in cxt); never throws, false on error */
extern bool iotpipe_kafka_read_source(int source_id, IotKafkaSource *src, MemoryContext cxt);

/* a partition's state, the table grown as needed; NULL for a negative partition */
extern IotKafkaPart *iotpipe_kafka_part(IotKafkaParts *parts, int32 partition);
extern void iotpipe_kafka_unassign_all(IotKafkaParts *parts);

/*
 * Put the stored offsets of the partitions in list into list and parts
 * (which then has exactly these partitions assigned).  Partitions without a
 * stored offset start at the beginning, or the end with start_at_end.  In a
 * transaction of its own (the caller must be outside one); never throws.
 */
extern bool iotpipe_kafka_load_offsets(const IotKafkaSource *src, IotKafkaParts *parts,
									   rd_kafka_topic_partition_list_t *list);

/*
 * The batch transaction: the batch's rows and dead letters, the next_offset
 * of every partition in_batch (fenced: only moved from its committed value)
 * and, with with_watermarks, the changed watermarks.  Never throws: false
 * when nothing was committed (*fenced: because another consumer moved the
 * stored offsets).  The caller moves committed on success.
 */
extern bool iotpipe_kafka_commit_batch(const char *topic, IotKafkaParts *parts,
									   IotBatch *batch, bool with_watermarks,
									   uint64 *accepted, uint64 *rejected, bool *fenced);

/* the changed watermarks in a transaction of their own; never throws */
extern bool iotpipe_kafka_publish_watermarks(const char *topic, IotKafkaParts *parts);

#endif							/* IOTPIPE_KAFKA_OFFSETS_H */
