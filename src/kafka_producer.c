/*-------------------------------------------------------------------------
 *
 * kafka_producer.c
 *	  The producer behind the simulator's kafka sink: an idempotent
 *	  librdkafka producer whose delivery reports and log lines are served
 *	  by iotpipe_producer_poll() on the caller's thread (the main queue,
 *	  log lines included, is only served there).
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "kafka_common.h"
#include "kafka_producer.h"

#include <librdkafka/rdkafka.h>

struct IotProducer
{
	rd_kafka_t *rk;
	rd_kafka_topic_t *rkt;
	int			failed;			/* since the last poll */
	char		lasterr[256];
};

static void
rk_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	IotProducer *p = (IotProducer *) opaque;

	if (m->err)
	{
		p->failed++;
		strlcpy(p->lasterr, rd_kafka_err2str(m->err), sizeof(p->lasterr));
	}
}

IotProducer *
iotpipe_producer_create(const char *brokers, const char *topic, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	IotProducer *p = palloc0(sizeof(IotProducer));

	iotpipe_kafka_log_as("iotpipe simulator (kafka sink)");

	if (!iotpipe_kafka_conf_set(conf, "bootstrap.servers", brokers, errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "linger.ms", "5", errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "enable.idempotence", "true", errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "client.id", "iotpipe-simulator", errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "log.queue", "true", errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "partitioner", "murmur2_random", errbuf, errlen))
	{
		rd_kafka_conf_destroy(conf);
		pfree(p);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, iotpipe_kafka_log_cb);
	rd_kafka_conf_set_dr_msg_cb(conf, rk_dr_cb);
	rd_kafka_conf_set_opaque(conf, p);
	p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errbuf, errlen);
	if (p->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		pfree(p);
		return NULL;
	}
	/* logs to the main queue, served by rd_kafka_poll() on our thread */
	rd_kafka_set_log_queue(p->rk, NULL);
	p->rkt = rd_kafka_topic_new(p->rk, topic, NULL);
	if (p->rkt == NULL)
	{
		snprintf(errbuf, errlen, "could not create topic handle: %s",
				 rd_kafka_err2str(rd_kafka_last_error()));
		rd_kafka_destroy(p->rk);
		pfree(p);
		return NULL;
	}
	return p;
}

bool
iotpipe_producer_send(IotProducer *p, const char *key, size_t keylen,
					  const char *value, size_t len)
{
	rd_kafka_resp_err_t err;

	err = rd_kafka_producev(p->rk,
							RD_KAFKA_V_RKT(p->rkt),
							RD_KAFKA_V_KEY((void *) key, keylen),
							RD_KAFKA_V_VALUE((void *) value, len),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		return false;
	if (err)
	{
		/* a permanent error for this message: count it, do not retry */
		p->failed++;
		strlcpy(p->lasterr, rd_kafka_err2str(err), sizeof(p->lasterr));
	}
	return true;
}

int
iotpipe_producer_poll(IotProducer *p, int timeout_ms, char *errbuf, size_t errlen)
{
	int			failed;

	if (timeout_ms > 0 && rd_kafka_outq_len(p->rk) > 0)
		(void) rd_kafka_flush(p->rk, timeout_ms);
	else
		(void) rd_kafka_poll(p->rk, 0);
	iotpipe_kafka_emit_logs();
	failed = p->failed;
	if (failed > 0 && errbuf && errlen > 0)
		strlcpy(errbuf, p->lasterr, errlen);
	else if (errbuf && errlen > 0)
		errbuf[0] = '\0';
	p->failed = 0;
	return failed;
}

void
iotpipe_producer_destroy(IotProducer *p)
{
	if (p == NULL)
		return;
	rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	(void) rd_kafka_poll(p->rk, 0);
	rd_kafka_topic_destroy(p->rkt);
	rd_kafka_destroy(p->rk);
	iotpipe_kafka_emit_logs();
	pfree(p);
}
