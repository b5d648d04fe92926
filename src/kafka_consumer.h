/*-------------------------------------------------------------------------
 *
 * kafka_consumer.h
 *	  The Kafka consumer worker (kafka_consumer.c): one member of a
 *	  source's consumer group, ingesting exactly once.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_KAFKA_CONSUMER_H
#define IOTPIPE_KAFKA_CONSUMER_H

#include "iotpipe.h"

#include "fmgr.h"

/* the worker's entry point; the launcher starts it by this name */
extern PGDLLEXPORT void iotpipe_kafka_main(Datum arg);

#endif							/* IOTPIPE_KAFKA_CONSUMER_H */
