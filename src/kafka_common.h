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
 * Is option key (value val, or read from file when file is not NULL)
 * allowed?  NULL if so, else a palloc'd message naming the property, never
 * a secret value.  The allowlist is in kafka_common.c and docs/kafka.md.
 */
extern char *iotpipe_kafka_check_option(const char *key, const char *val, const char *file);

/* the errhint of a refused option: where the allowed properties are listed */
extern const char *iotpipe_kafka_options_hint(void);

/*
 * The content of the secret file of option key (under iotpipe.secrets_dir);
 * NULL with a message in *err (never the content).  Zero and pfree it.
 */
extern char *iotpipe_kafka_read_secret(const char *key, const char *file, char **err);

/*
 * Check, then apply user options (librdkafka properties) to conf; files[i]
 * (files may be NULL) names the secret file of keys[i], vals[i] is NULL then.
 * NULL on success, else a palloc'd message that names the option and never
 * a secret value.  Nothing is set unless every option is allowed.
 */
extern char *iotpipe_kafka_apply_options(rd_kafka_conf_t *conf, int n, char **keys,
										 char **vals, char **files);

/* one property set by iotpipe itself; false with librdkafka's reason in err */
extern bool iotpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
								   char *err, size_t errlen);

#endif							/* IOTPIPE_KAFKA_COMMON_H */
