/*-------------------------------------------------------------------------
 *
 * kafka_producer.h
 *	  The producer behind the simulator's kafka sink (kafka_producer.c).
 *	  It drives librdkafka from the caller's thread.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_KAFKA_PRODUCER_H
#define IOTPIPE_KAFKA_PRODUCER_H

#include "iotpipe.h"

typedef struct IotProducer IotProducer;

extern IotProducer *iotpipe_producer_create(const char *brokers, const char *topic,
											char *errbuf, size_t errlen);
/* false when the local queue is full: poll and retry */
extern bool iotpipe_producer_send(IotProducer *p, const char *key, size_t keylen,
								  const char *value, size_t len);
/* serve delivery reports and logs; returns delivery failures seen since last call */
extern int	iotpipe_producer_poll(IotProducer *p, int timeout_ms, char *errbuf, size_t errlen);
extern void iotpipe_producer_destroy(IotProducer *p);

#endif							/* IOTPIPE_KAFKA_PRODUCER_H */
