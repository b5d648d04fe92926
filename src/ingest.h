/*-------------------------------------------------------------------------
 *
 * ingest.h
 *	  The ingest core: batches, the direct write (through bulkwrite.c),
 *	  dead letters (ingest.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_INGEST_H
#define IOTPIPE_INGEST_H

#include "jsonmsg.h"

typedef struct IotSource
{
	const char *source;			/* 'sql', 'simulator', 'kafka' */
	const char *topic;			/* Kafka only */
	int			partition;
	int64		offset;
} IotSource;

typedef struct IotBatch IotBatch;

extern IotBatch *iotpipe_batch_create(MemoryContext parent);
extern void iotpipe_batch_reset(IotBatch *batch);
extern int	iotpipe_batch_count(IotBatch *batch);
/* add one raw message: parsed now; rejects are kept for the dead-letter write */
extern bool iotpipe_batch_add(IotBatch *batch, const char *data, size_t len,
							  const IotSource *src);
/* add a message known to be rejected before parsing (NULL value, too large) */
extern void iotpipe_batch_reject(IotBatch *batch, const char *data, size_t len,
								 const IotSource *src, const char *reason);
/* write the batch in the current transaction; returns rows accepted */
extern void iotpipe_batch_flush(IotBatch *batch, uint64 *accepted, uint64 *rejected);

/* the launcher: ingest again up to max held readings (dead letters "held: ...") */
extern int	iotpipe_ingest_retry_held(int max);

/* what the alert engine sees of a batch (accepted readings, in input order) */
extern int	iotpipe_batch_nreadings(IotBatch *batch);
extern IotReading *iotpipe_batch_readings(IotBatch *batch);

#endif							/* IOTPIPE_INGEST_H */
