/*-------------------------------------------------------------------------
 *
 * kafka_common.c
 *	  What the Kafka consumer (kafka_consumer.c) and the simulator's
 *	  producer (kafka_producer.c) share: the librdkafka options a source may
 *	  set (iotpipe._kafka_check_options checks them for kafka_start), conf
 *	  building, and librdkafka's log lines.
 *
 *	  Log lines: librdkafka's log callback may in principle run on one of
 *	  its own threads, where elog must never be called.  The callback only
 *	  copies the line into a small buffer under a mutex; the worker writes
 *	  the buffered lines to the server log from its own thread
 *	  (iotpipe_kafka_emit_logs), after serving its log queue.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "version.h"
#include "kafka_common.h"

#include <pthread.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* ---------- librdkafka log lines: buffered, written from our thread ---------- */

#define LOGBUF_LINES 128

typedef struct LogLine
{
	int			level;
	char		fac[24];
	char		text[400];
} LogLine;

static pthread_mutex_t logbuf_lock = PTHREAD_MUTEX_INITIALIZER;
static LogLine logbuf[LOGBUF_LINES];
static int	logbuf_n = 0;
static int	logbuf_dropped = 0;
static const char *log_who = "iotpipe kafka";

void
iotpipe_kafka_log_as(const char *who)
{
	log_who = who;
}

/* may in principle run on a librdkafka thread: copy only, never elog */
void
iotpipe_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	pthread_mutex_lock(&logbuf_lock);
	if (logbuf_n < LOGBUF_LINES)
	{
		LogLine    *l = &logbuf[logbuf_n++];

		l->level = level;
		strlcpy(l->fac, fac, sizeof(l->fac));
		strlcpy(l->text, buf, sizeof(l->text));
	}
	else
		logbuf_dropped++;
	pthread_mutex_unlock(&logbuf_lock);
}

/* write buffered librdkafka log lines; syslog levels <= 5 at LOG */
void
iotpipe_kafka_emit_logs(void)
{
	LogLine		lines[LOGBUF_LINES];
	int			n,
				dropped,
				i;

	pthread_mutex_lock(&logbuf_lock);
	n = logbuf_n;
	dropped = logbuf_dropped;
	if (n > 0)
		memcpy(lines, logbuf, sizeof(LogLine) * n);
	logbuf_n = 0;
	logbuf_dropped = 0;
	pthread_mutex_unlock(&logbuf_lock);

	for (i = 0; i < n; i++)
		ereport(lines[i].level <= 5 ? LOG : DEBUG1,
				(errmsg_internal("%s: librdkafka %s: %s", log_who, lines[i].fac, lines[i].text)));
	if (dropped > 0)
		ereport(LOG, (errmsg_internal("%s: %d librdkafka log lines dropped", log_who, dropped)));
}

/* ---------- options ---------- */

/* options iotpipe sets itself (they carry the exactly-once design) */
static const char *const reserved_options[] = {
	"bootstrap.servers", "metadata.broker.list", "group.id", "enable.auto.commit",
	"enable.auto.offset.store", "log.queue", "group.instance.id", NULL
};

/* options whose values may be secrets: never echoed, not even in errors */
static const char *const secret_words[] = {
	"password", "secret", "key", "token", "jaas", "credential", "sasl.", NULL
};

static bool
in_list(const char *key, const char *const *list, bool substring)
{
	for (; *list; list++)
		if (substring ? strstr(key, *list) != NULL : strcmp(key, *list) == 0)
			return true;
	return false;
}

char *
iotpipe_kafka_apply_options(rd_kafka_conf_t *conf, int n, char **keys, char **vals)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		char		errstr[512];

		if (in_list(keys[i], reserved_options, false))
			return psprintf("kafka option \"%s\" is managed by iotpipe", keys[i]);
		if (strcmp(keys[i], "partition.assignment.strategy") == 0 &&
			strstr(vals[i], "cooperative") != NULL)
			return psprintf("kafka option \"%s\" must not use the cooperative protocol", keys[i]);
		if (rd_kafka_conf_set(conf, keys[i], vals[i], errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			if (in_list(keys[i], secret_words, true))
				return psprintf("invalid value for kafka option \"%s\"", keys[i]);
			return psprintf("invalid kafka option \"%s\": %s", keys[i], errstr);
		}
	}
	return NULL;
}

bool
iotpipe_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *val,
					   char *err, size_t errlen)
{
	return rd_kafka_conf_set(conf, key, val, err, errlen) == RD_KAFKA_CONF_OK;
}

/*
 * iotpipe._kafka_check_options(keys text[], vals text[]): kafka_start's
 * validation of librdkafka properties, without connecting anywhere.
 */
PG_FUNCTION_INFO_V1(iotpipe_kafka_check_options);
Datum
iotpipe_kafka_check_options(PG_FUNCTION_ARGS)
{
	ArrayType  *ka = PG_GETARG_ARRAYTYPE_P(0);
	ArrayType  *va = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *kd,
			   *vd;
	bool	   *kn,
			   *vn;
	int			nk,
				nv,
				i;
	char	  **keys,
			  **vals;
	rd_kafka_conf_t *conf;
	char	   *err;

	iotpipe_require_version();
	deconstruct_array(ka, TEXTOID, -1, false, TYPALIGN_INT, &kd, &kn, &nk);
	deconstruct_array(va, TEXTOID, -1, false, TYPALIGN_INT, &vd, &vn, &nv);
	if (nk != nv || array_contains_nulls(ka) || array_contains_nulls(va))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kafka option keys and values must match and not be null")));
	keys = palloc(sizeof(char *) * Max(nk, 1));
	vals = palloc(sizeof(char *) * Max(nk, 1));
	for (i = 0; i < nk; i++)
	{
		keys[i] = TextDatumGetCString(kd[i]);
		vals[i] = TextDatumGetCString(vd[i]);
	}
	conf = rd_kafka_conf_new();
	err = iotpipe_kafka_apply_options(conf, nk, keys, vals);
	rd_kafka_conf_destroy(conf);
	for (i = 0; i < nk; i++)
		explicit_bzero(vals[i], strlen(vals[i]));
	if (err)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", err),
				 errhint("Options are librdkafka consumer properties; bootstrap servers and the group id are separate arguments and offsets are always committed with the data.")));
	PG_RETURN_VOID();
}

void
iotpipe_kafka_init(void)
{
}
