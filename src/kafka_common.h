/*-------------------------------------------------------------------------
 *
 * kafka_common.h
 *	  What the Kafka consumer and producer share (kafka_common.c): the
 *	  librdkafka options users may set, conf building, and the log queue
 *	  (librdkafka's log callback only copies; lines are written from the
 *	  worker's thread).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_KAFKA_COMMON_H
#define IOTPIPE_KAFKA_COMMON_H

#include "iotpipe.h"

#include <librdkafka/rdkafka.h>

/* _PG_init's hook for the Kafka modules (nothing to set up today) */
extern void iotpipe_kafka_init(void);

/* ---------- log lines ---------- */

/* the prefix of librdkafka's lines in the server log (a string that lives on) */
extern void iotpipe_kafka_log_as(const char *who);

/* librdkafka's log callback: copies the line, never calls elog */
extern void iotpipe_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
								 const char *buf);

/* write the copied lines to the server log; on the worker's thread only */
extern void iotpipe_kafka_emit_logs(void);

/* ---------- options and conf ---------- */

/*
 * Apply user options (librdkafka properties) to conf.  NULL on success,
 * else a palloc'd message that names the option and, for options that may
 * be secrets, never its value.  Options iotpipe manages are refused.
 */
extern char *iotpipe_kafka_apply_options(rd_kafka_conf_t *conf, int n, char **keys,
										 char **vals);

/* one property set by iotpipe itself; false with librdkafka's reason in err */
extern bool iotpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
								   char *err, size_t errlen);

#endif							/* IOTPIPE_KAFKA_COMMON_H */
