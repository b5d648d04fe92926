/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  Kafka consumer workers and the simulator's producer (kafka.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_KAFKA_H
#define IOTPIPE_KAFKA_H

#include "iotpipe.h"
#include "fmgr.h"

extern PGDLLEXPORT void iotpipe_kafka_main(Datum arg);
extern void iotpipe_kafka_init(void);

/* a producer for the simulator's kafka sink (drives librdkafka from the caller's thread) */
typedef struct IotProducer IotProducer;
extern IotProducer *iotpipe_producer_create(const char *brokers, const char *topic,
											char *errbuf, size_t errlen);
/* false when the local queue is full: poll and retry */
extern bool iotpipe_producer_send(IotProducer *p, const char *key, size_t keylen,
								  const char *value, size_t len);
/* serve delivery reports and logs; returns delivery failures seen since last call */
extern int	iotpipe_producer_poll(IotProducer *p, int timeout_ms, char *errbuf, size_t errlen);
extern void iotpipe_producer_destroy(IotProducer *p);

#endif							/* IOTPIPE_KAFKA_H */
