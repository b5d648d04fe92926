/*-------------------------------------------------------------------------
 *
 * kafka.c
 *	  Kafka consumer workers and the simulator's producer.  (Placeholder
 *	  until the Kafka work lands: workers exit, the producer refuses.)
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"

void
iotpipe_kafka_init(void)
{
}

void
iotpipe_kafka_main(Datum arg)
{
	BackgroundWorkerUnblockSignals();
	proc_exit(0);
}

IotProducer *
iotpipe_producer_create(const char *brokers, const char *topic, char *errbuf, size_t errlen)
{
	strlcpy(errbuf, "the kafka sink is not available in this build", errlen);
	return NULL;
}

bool
iotpipe_producer_send(IotProducer *p, const char *key, size_t keylen,
					  const char *value, size_t len)
{
	return false;
}

int
iotpipe_producer_poll(IotProducer *p, int timeout_ms, char *errbuf, size_t errlen)
{
	return 0;
}

void
iotpipe_producer_destroy(IotProducer *p)
{
}
