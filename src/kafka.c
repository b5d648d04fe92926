/*-------------------------------------------------------------------------
 *
 * kafka.c
 *	  Kafka consumer workers (exactly once) and the producer behind the
 *	  simulator's kafka sink.  Design and guarantees: docs/kafka.md.
 *
 *	  The workers of a source (iotpipe.kafka_sources, started by the
 *	  launcher) form one consumer group, eager rebalancing, static members.
 *	  iotpipe.kafka_offsets is the only truth: each batch's rows, dead
 *	  letters and per-partition next_offset commit in one transaction, and
 *	  the offsets upsert is fenced (it only moves a next_offset from the
 *	  value this worker knows), so a batch raced by a rebalance rolls back.
 *
 *	  Threads: everything librdkafka calls back into runs on our thread,
 *	  inside our own librdkafka calls, never inside a transaction of ours.
 *	  The main queue is forwarded to the consumer queue (rebalance, error
 *	  and commit callbacks are served by rd_kafka_consume_batch_queue); log
 *	  lines go to a queue of their own, drained by the loop, and are only
 *	  copied by the callback.  The rebalance callback reads the stored
 *	  offsets in a transaction of its own inside PG_TRY (no error ever
 *	  unwinds through librdkafka) and puts them into the assignment list.
 *	  librdkafka 2.0's batch API may return messages fetched before and
 *	  after a rebalance in one call: after a rebalance that call's messages
 *	  and the partial batch are dropped and the assignment re-applied at
 *	  the stored offsets.
 *
 *	  States: starting -> waiting (joining; topic missing) -> running /
 *	  idle (no partitions) <-> backoff (Kafka unreachable: librdkafka
 *	  reconnects, we probe; or a failed batch: the consumer is rebuilt
 *	  after a growing pause) -> stopped.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "guc.h"
#include "ingest.h"
#include "sensors.h"
#include "status.h"
#include "worker.h"
#include "kafka.h"

#include <pthread.h>
#include <librdkafka/rdkafka.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "version.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

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

/* may in principle run on a librdkafka thread: copy only, never elog */
static void
rk_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
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
static void
emit_logs(void)
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

/*
 * Apply user options to conf.  Returns NULL on success, else a message that
 * names the option but (for secret-looking options) never its value.
 */
static char *
apply_options(rd_kafka_conf_t *conf, int n, char **keys, char **vals)
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

static bool
conf_set(rd_kafka_conf_t *conf, const char *key, const char *val, char *err, size_t errlen)
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
	err = apply_options(conf, nk, keys, vals);
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

/* ---------- the consumer worker ---------- */

typedef struct KafkaConfig
{
	bool		enabled;
	char	   *brokers;
	char	   *topic;
	char	   *group_id;
	int			nopts;
	char	  **keys;
	char	  **vals;
	bool		start_at_end;	/* partitions without a stored offset */
} KafkaConfig;

typedef struct PartState
{
	bool		assigned;
	bool		in_batch;
	int64		committed;		/* next_offset in the table as we know it; -1 none */
	int64		pos;			/* next offset we accept; -1 any */
	int64		batch_next;		/* next_offset after the pending batch */
	int64		lo;				/* cached watermarks; -1 unknown */
	int64		hi;
	int64		hi_written;
} PartState;

typedef struct Consumer
{
	rd_kafka_t *rk;
	rd_kafka_queue_t *q;		/* consumer queue (main queue forwarded here) */
	rd_kafka_queue_t *logq;
	rd_kafka_topic_t *rkt;		/* for metadata probes */
	PartState  *parts;			/* indexed by partition number */
	int			nparts;
	bool		rebalanced;		/* a rebalance callback ran */
	bool		rebalance_failed;
	bool		closing;
	/* errors reported by callbacks, handled by the loop */
	bool		err_pending;
	bool		err_fatal;
	rd_kafka_resp_err_t err_code;
	char		err_text[IOTPIPE_ERRLEN];
} Consumer;

typedef enum SessionEnd
{
	SESSION_STOP,				/* asked to stop */
	SESSION_FAILED,				/* rebuild the consumer after a pause */
	SESSION_FENCED				/* another worker moved our offsets: re-read now */
} SessionEnd;

static KafkaConfig cfg;
static MemoryContext workcxt;
static char who[IOTPIPE_NAMELEN + 32];
static SPIPlanPtr offsets_plan = NULL;
static SPIPlanPtr watermarks_plan = NULL;
static bool made_progress = false;

static void
handle_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (!PostmasterIsAlive())
		proc_exit(1);
}

static void
kafka_wait(long ms)
{
	if (WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
				  PG_WAIT_EXTENSION) & WL_LATCH_SET)
		ResetLatch(MyLatch);
	handle_interrupts();
}

static bool
should_stop(void)
{
	return ShutdownRequestPending || iotpipe_worker_should_stop();
}

/*
 * Run fn(arg) in a transaction of its own with SPI connected.  Never throws:
 * on error the transaction is rolled back, the error logged and published
 * as the worker's last error, and false returned.
 */
static bool
in_xact(void (*fn) (void *), void *arg, const char *what)
{
	char	   *err;

	if (iotpipe_run_xact(fn, arg, what, true, &err))
		return true;
	iotpipe_set_error("%s", err);
	ereport(LOG, (errmsg("%s: %s failed: %s", who, what, err)));
	pfree(err);
	return false;
}

/* read the source's settings (arg: source id); cfg.topic stays NULL if it is gone */
static void
read_source_tx(void *arg)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(*(int *) arg)};
	MemoryContext old;
	uint64		i;

	if (SPI_execute_with_args("SELECT enabled, brokers, topic, group_id FROM iotpipe.kafka_sources "
							  "WHERE source_id = $1", 1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return;
	old = MemoryContextSwitchTo(workcxt);
	cfg.enabled = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	cfg.brokers = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	cfg.topic = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	cfg.group_id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	MemoryContextSwitchTo(old);

	if (SPI_execute_with_args("SELECT e.key, coalesce(e.value #>> '{}', '') FROM iotpipe.kafka_sources s, "
							  "jsonb_each(s.options) e WHERE s.source_id = $1 ORDER BY 1",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the options of the kafka source");
	old = MemoryContextSwitchTo(workcxt);
	cfg.nopts = (int) SPI_processed;
	cfg.keys = palloc(sizeof(char *) * Max(cfg.nopts, 1));
	cfg.vals = palloc(sizeof(char *) * Max(cfg.nopts, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		cfg.keys[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		cfg.vals[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		if (strcmp(cfg.keys[i], "auto.offset.reset") == 0)
			cfg.start_at_end = (strcmp(cfg.vals[i], "latest") == 0 ||
								strcmp(cfg.vals[i], "largest") == 0 ||
								strcmp(cfg.vals[i], "end") == 0);
	}
	MemoryContextSwitchTo(old);
}

static PartState *
part_state(Consumer *c, int32 partition)
{
	if (partition < 0)
		return NULL;
	if (partition >= c->nparts)
	{
		int			n = Max(partition + 1, c->nparts * 2);
		int			i;

		c->parts = repalloc(c->parts, sizeof(PartState) * n);
		for (i = c->nparts; i < n; i++)
		{
			memset(&c->parts[i], 0, sizeof(PartState));
			c->parts[i].committed = c->parts[i].pos = -1;
			c->parts[i].lo = c->parts[i].hi = c->parts[i].hi_written = -1;
		}
		c->nparts = n;
	}
	return &c->parts[partition];
}

static void
unassign_all(Consumer *c)
{
	int			i;

	for (i = 0; i < c->nparts; i++)
		c->parts[i].assigned = c->parts[i].in_batch = false;
}

typedef struct OffsetsArg
{
	Consumer   *c;
	rd_kafka_topic_partition_list_t *list;
} OffsetsArg;

static void
load_offsets_tx(void *arg)
{
	OffsetsArg *oa = (OffsetsArg *) arg;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(cfg.topic)};
	uint64		r;
	int			i;

	if (SPI_execute_with_args("SELECT partition, next_offset FROM iotpipe.kafka_offsets WHERE topic = $1",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.kafka_offsets");
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));
		int64		off = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));

		for (i = 0; i < oa->list->cnt; i++)
			if (oa->list->elems[i].partition == p)
			{
				oa->list->elems[i].offset = off;
				oa->c->parts[p].committed = off;
			}
	}
}

/*
 * Put the stored offsets of the partitions in list into the list and our
 * partition states.  Partitions without a stored offset start at the
 * beginning (or the end when auto.offset.reset says latest).  Never throws.
 */
static bool
load_offsets(Consumer *c, rd_kafka_topic_partition_list_t *list)
{
	OffsetsArg	oa = {c, list};
	bool		ok;
	int			i;

	for (i = 0; i < list->cnt; i++)
	{
		part_state(c, list->elems[i].partition)->committed = -1;
		list->elems[i].offset = cfg.start_at_end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
	}
	/* callbacks only run inside librdkafka calls made outside transactions */
	ok = !IsTransactionState() && in_xact(load_offsets_tx, &oa, "reading stored offsets");
	unassign_all(c);
	for (i = 0; ok && i < list->cnt; i++)
	{
		PartState  *ps = &c->parts[list->elems[i].partition];

		ps->assigned = true;
		ps->pos = ps->committed;
	}
	return ok;
}

/* runs on our thread, inside rd_kafka_consume_batch_queue() or close */
static void
rk_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
				rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
	Consumer   *c = (Consumer *) opaque;

	c->rebalanced = true;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && !c->closing)
	{
		if (load_offsets(c, partitions))
		{
			rd_kafka_assign(rk, partitions);
			return;
		}
		c->rebalance_failed = true;
	}
	unassign_all(c);
	rd_kafka_assign(rk, NULL);
}

/* may be served on our thread only (main queue forwarded); copy only */
static void
rk_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	Consumer   *c = (Consumer *) opaque;

	c->err_pending = true;
	c->err_code = err;
	strlcpy(c->err_text, reason, sizeof(c->err_text));
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		c->err_fatal = true;
}

static void
rk_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
			 rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
	/* Kafka-side commits are informational; the table is the truth */
}

/*
 * Defaults iotpipe picks where librdkafka's suit a long-running ingest worker
 * badly; options override them.  Short sessions and reconnect backoff: a
 * crashed worker's partitions move on within seconds, a broker that is back
 * is found quickly; fast metadata refresh: new topics and partitions within
 * seconds; earliest: a new source reads the topic from the start.  A deep
 * prefetch queue: librdkafka 2.0 stops fetching when the queue is over
 * queued.min.messages and its broker thread may then sleep for up to a
 * second, so the queue must hold more than a second of consumption or the
 * worker starves while draining a backlog (100k: half the throughput).
 */
static const char *const consumer_defaults[][2] = {
	{"topic.metadata.refresh.interval.ms", "5000"},
	{"auto.offset.reset", "earliest"},
	{"allow.auto.create.topics", "false"},
	{"session.timeout.ms", "10000"},
	{"heartbeat.interval.ms", "500"},	/* a rebalance is noticed within 0.5 s */
	{"reconnect.backoff.max.ms", "2000"},
	{"queued.min.messages", "300000"},
	{NULL, NULL}
};

static Consumer *
consumer_create(int index, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *sub;
	Consumer   *c;
	char	   *err;
	char		client_id[300];
	int			i,
				j;
	rd_kafka_resp_err_t rerr;

	c = MemoryContextAllocZero(workcxt, sizeof(Consumer));
	c->nparts = 0;
	c->parts = MemoryContextAllocZero(workcxt, sizeof(PartState));
	(void) part_state(c, 15);

	err = apply_options(conf, cfg.nopts, cfg.keys, cfg.vals);
	if (err)
	{
		strlcpy(errbuf, err, errlen);
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	for (i = 0; consumer_defaults[i][0]; i++)
	{
		for (j = 0; j < cfg.nopts; j++)
			if (strcmp(cfg.keys[j], consumer_defaults[i][0]) == 0)
				break;
		if (j == cfg.nopts &&
			!conf_set(conf, consumer_defaults[i][0], consumer_defaults[i][1], errbuf, errlen))
		{
			rd_kafka_conf_destroy(conf);
			return NULL;
		}
	}
	/*
	 * A stable identity per worker (static membership): a worker back from a
	 * crash or restart takes its partitions back at once instead of waiting
	 * for its old session to expire.
	 */
	snprintf(client_id, sizeof(client_id), "iotpipe-%s-%d", cfg.topic, index + 1);
	if (!conf_set(conf, "bootstrap.servers", cfg.brokers, errbuf, errlen) ||
		!conf_set(conf, "group.id", cfg.group_id, errbuf, errlen) ||
		!conf_set(conf, "client.id", client_id, errbuf, errlen) ||
		!conf_set(conf, "group.instance.id", client_id, errbuf, errlen) ||
		!conf_set(conf, "enable.auto.commit", "false", errbuf, errlen) ||
		!conf_set(conf, "enable.auto.offset.store", "false", errbuf, errlen) ||
		!conf_set(conf, "log.queue", "true", errbuf, errlen))
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, rk_log_cb);
	rd_kafka_conf_set_error_cb(conf, rk_error_cb);
	rd_kafka_conf_set_rebalance_cb(conf, rk_rebalance_cb);
	rd_kafka_conf_set_offset_commit_cb(conf, rk_commit_cb);
	rd_kafka_conf_set_opaque(conf, c);

	c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errbuf, errlen);
	if (c->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		emit_logs();
		return NULL;
	}
	/* conf is owned by rk from here */
	c->logq = rd_kafka_queue_new(c->rk);
	rd_kafka_set_log_queue(c->rk, c->logq);
	rd_kafka_poll_set_consumer(c->rk);
	c->q = rd_kafka_queue_get_consumer(c->rk);
	c->rkt = rd_kafka_topic_new(c->rk, cfg.topic, NULL);

	sub = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(sub, cfg.topic, RD_KAFKA_PARTITION_UA);
	rerr = rd_kafka_subscribe(c->rk, sub);
	rd_kafka_topic_partition_list_destroy(sub);
	if (rerr)
	{
		snprintf(errbuf, errlen, "could not subscribe to topic \"%s\": %s",
				 cfg.topic, rd_kafka_err2str(rerr));
		if (c->rkt)
			rd_kafka_topic_destroy(c->rkt);
		rd_kafka_queue_destroy(c->q);
		rd_kafka_queue_destroy(c->logq);
		rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
		return NULL;
	}
	return c;
}

static void
serve_logs(Consumer *c)
{
	rd_kafka_queue_poll_callback(c->logq, 0);
	emit_logs();
}

/* leave the group (bounded in time), then free the client */
static void
consumer_destroy(Consumer *c, bool broker_down)
{
	rd_kafka_queue_t *cq = rd_kafka_queue_new(c->rk);
	rd_kafka_error_t *error;
	TimestampTz deadline = GetCurrentTimestamp() + (broker_down ? 2 : 10) * USECS_PER_SEC;

	c->closing = true;
	error = rd_kafka_consumer_close_queue(c->rk, cq);
	if (error)
		rd_kafka_error_destroy(error);
	else
	{
		/*
		 * cq also gets what is left in the consumer queue: serve it the way
		 * the main loop does (rebalance callbacks run, messages are dropped;
		 * a plain callback poll would abort on a fetched message).
		 */
		while (!rd_kafka_consumer_closed(c->rk) && GetCurrentTimestamp() < deadline)
		{
			rd_kafka_message_t *msgs[256];
			ssize_t		n = rd_kafka_consume_batch_queue(cq, 100, msgs, lengthof(msgs));

			while (n > 0)
				rd_kafka_message_destroy(msgs[--n]);
			serve_logs(c);
		}
	}
	rd_kafka_queue_destroy(cq);
	if (c->rkt)
		rd_kafka_topic_destroy(c->rkt);
	rd_kafka_queue_destroy(c->q);
	serve_logs(c);
	rd_kafka_queue_destroy(c->logq);
	rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	emit_logs();
	pfree(c->parts);
	pfree(c);
}

/* re-apply the current assignment at the stored offsets */
static bool
resync_assignment(Consumer *c)
{
	rd_kafka_topic_partition_list_t *list = NULL;
	bool		ok = true;

	if (rd_kafka_assignment(c->rk, &list) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return false;
	if (list->cnt > 0)
	{
		ok = load_offsets(c, list);
		if (ok)
			ok = (rd_kafka_assign(c->rk, list) == RD_KAFKA_RESP_ERR_NO_ERROR);
	}
	rd_kafka_topic_partition_list_destroy(list);
	return ok;
}

/* upsert the cached watermarks that changed; in the caller's transaction, SPI connected */
static void
write_watermarks(Consumer *c)
{
	Datum	   *parts = palloc(sizeof(Datum) * c->nparts);
	Datum	   *los = palloc(sizeof(Datum) * c->nparts);
	Datum	   *his = palloc(sizeof(Datum) * c->nparts);
	bool	   *lonulls = palloc(sizeof(bool) * c->nparts);
	Datum		args[4];
	int			n = 0,
				i,
				ret;
	int			dims[1];
	int			lbs[1] = {1};

	for (i = 0; i < c->nparts; i++)
	{
		PartState  *ps = &c->parts[i];

		if (!ps->assigned || ps->hi < 0 || ps->hi == ps->hi_written)
			continue;
		parts[n] = Int32GetDatum(i);
		los[n] = Int64GetDatum(ps->lo);
		lonulls[n] = (ps->lo < 0);
		his[n] = Int64GetDatum(ps->hi);
		n++;
	}
	if (n == 0)
		return;
	dims[0] = n;
	if (watermarks_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO iotpipe.kafka_watermarks AS w "
						   "  (topic, partition, low_watermark, high_watermark, updated_at) "
						   "SELECT $1, p, lo, hi, now() FROM unnest($2, $3, $4) AS t(p, lo, hi) "
						   "ON CONFLICT (topic, partition) DO UPDATE "
						   "  SET low_watermark = EXCLUDED.low_watermark, "
						   "      high_watermark = EXCLUDED.high_watermark, updated_at = now()",
						   4, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for the watermarks upsert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		watermarks_plan = plan;
	}
	args[0] = CStringGetTextDatum(cfg.topic);
	args[1] = PointerGetDatum(construct_array(parts, n, INT4OID, 4, true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_md_array(los, lonulls, 1, dims, lbs, INT8OID, 8,
												 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(his, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ret = SPI_execute_plan(watermarks_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "watermarks upsert failed: %s", SPI_result_code_string(ret));
}

/* after a commit: mark the watermarks written */
static void
watermarks_written(Consumer *c)
{
	int			i;

	for (i = 0; i < c->nparts; i++)
		if (c->parts[i].assigned && c->parts[i].hi >= 0)
			c->parts[i].hi_written = c->parts[i].hi;
}

/* refresh cached watermarks; true if any changed since last written */
static bool
refresh_watermarks(Consumer *c)
{
	bool		changed = false;
	int			i;

	for (i = 0; i < c->nparts; i++)
	{
		PartState  *ps = &c->parts[i];
		int64_t		lo,
					hi;

		if (!ps->assigned)
			continue;
		if (rd_kafka_get_watermark_offsets(c->rk, cfg.topic, i, &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR)
			continue;
		if (hi >= 0)
			ps->hi = hi;
		if (lo >= 0)
			ps->lo = lo;
		if (ps->hi >= 0 && ps->hi != ps->hi_written)
			changed = true;
	}
	return changed;
}

typedef struct BatchArg
{
	Consumer   *c;
	IotBatch   *batch;
	bool		with_watermarks;
	int			n;				/* partitions in the batch */
	Datum	   *parts;
	Datum	   *expected;
	Datum	   *next;
	uint64		accepted;
	uint64		rejected;
	bool		fenced;
} BatchArg;

static void
commit_batch_tx(void *arg)
{
	BatchArg   *ba = (BatchArg *) arg;
	Datum		args[4];

	iotpipe_batch_flush(ba->batch, &ba->accepted, &ba->rejected);
	if (offsets_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

		/*
		 * The fence: a stored offset only moves from the value we know.  An
		 * existing row never matches expected = -1 (we saw none).
		 */
		offsets_plan = SPI_prepare("INSERT INTO iotpipe.kafka_offsets AS o "
								   "  (topic, partition, next_offset, updated_at) "
								   "SELECT $1, p, nxt, now() FROM unnest($2, $4) AS t(p, nxt) "
								   "ON CONFLICT (topic, partition) DO UPDATE "
								   "  SET next_offset = EXCLUDED.next_offset, updated_at = now() "
								   "  WHERE o.next_offset = ($3)[array_position($2, o.partition)]",
								   4, types);
		if (offsets_plan == NULL)
			elog(ERROR, "SPI_prepare failed for the offsets upsert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(offsets_plan);
	}
	args[0] = CStringGetTextDatum(cfg.topic);
	args[1] = PointerGetDatum(construct_array(ba->parts, ba->n, INT4OID, 4, true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(ba->expected, ba->n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(ba->next, ba->n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(offsets_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "kafka offsets upsert failed");
	if (SPI_processed != (uint64) ba->n)
	{
		ba->fenced = true;
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("stored offsets of topic \"%s\" were moved by another consumer", cfg.topic),
				 errdetail("The batch is rolled back and consumed again from the stored offsets.")));
	}
	if (ba->with_watermarks)
		write_watermarks(ba->c);
}

/*
 * Write the pending batch, its offsets (and changed watermarks) in one
 * transaction.  Never throws; false if nothing was committed.
 */
static bool
commit_batch(Consumer *c, IotBatch *batch, bool with_watermarks, bool *fenced)
{
	BatchArg	ba = {c, batch, with_watermarks};
	rd_kafka_topic_partition_list_t *kcommit;
	int			i;

	ba.parts = palloc(sizeof(Datum) * c->nparts);
	ba.expected = palloc(sizeof(Datum) * c->nparts);
	ba.next = palloc(sizeof(Datum) * c->nparts);
	for (i = 0; i < c->nparts; i++)
	{
		if (!c->parts[i].in_batch)
			continue;
		ba.parts[ba.n] = Int32GetDatum(i);
		ba.expected[ba.n] = Int64GetDatum(c->parts[i].committed);
		ba.next[ba.n] = Int64GetDatum(c->parts[i].batch_next);
		ba.n++;
	}
	if (!in_xact(commit_batch_tx, &ba, "writing a batch"))
	{
		*fenced = ba.fenced;
		if (!ba.fenced)
			iotpipe_set_state(IOT_STATE_BACKOFF, "batch failed; consuming again from the stored offsets");
		ereport(LOG,
				(errmsg("%s: nothing of a batch of %d messages was committed", who, iotpipe_batch_count(batch)),
				 errdetail("It is consumed again from the stored offsets.")));
		pfree(ba.parts);
		pfree(ba.expected);
		pfree(ba.next);
		return false;
	}
	made_progress = true;
	if (with_watermarks)
		watermarks_written(c);
	iotpipe_count(ba.accepted + ba.rejected, ba.accepted, ba.rejected);

	/* tell Kafka too, for lag tooling; asynchronous, never read back */
	kcommit = rd_kafka_topic_partition_list_new(Max(ba.n, 1));
	for (i = 0; i < c->nparts; i++)
	{
		PartState  *ps = &c->parts[i];

		if (!ps->in_batch)
			continue;
		ps->committed = ps->batch_next;
		ps->in_batch = false;
		rd_kafka_topic_partition_list_add(kcommit, cfg.topic, i)->offset = ps->batch_next;
	}
	if (kcommit->cnt > 0)
		(void) rd_kafka_commit(c->rk, kcommit, 1);
	rd_kafka_topic_partition_list_destroy(kcommit);
	pfree(ba.parts);
	pfree(ba.expected);
	pfree(ba.next);
	return true;
}

static void
write_sensors_tx(void *arg)
{
	iotpipe_ingest_write_sensors(*(bool *) arg);
}

static void
write_watermarks_tx(void *arg)
{
	write_watermarks((Consumer *) arg);
}

static bool
is_topic_error(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
		err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
		err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
}

/* the worker's view of its health, published to iotpipe.status */
typedef struct Health
{
	bool		outage;			/* a kafka error is not yet resolved */
	bool		topic_missing;
	TimestampTz since;
	TimestampTz last_probe;
} Health;

static void
publish_state(Consumer *c, Health *h, bool joined)
{
	char		detail[IOTPIPE_ERRLEN];
	int			len = 0;
	int			nassigned = 0;
	int64		lag = 0;
	bool		lag_known = true;
	int			i;

	for (i = 0; i < c->nparts; i++)
	{
		PartState  *ps = &c->parts[i];

		if (!ps->assigned)
			continue;
		if (nassigned == 0)
			len = snprintf(detail, sizeof(detail), "topic %s partitions %d", cfg.topic, i);
		else if (len < (int) sizeof(detail) - 40)
			len += snprintf(detail + len, sizeof(detail) - len, ",%d", i);
		nassigned++;
		if (ps->hi >= 0 && ps->committed >= 0)
			lag += Max(ps->hi - ps->committed, 0);
		else if (ps->hi >= 0 && ps->lo >= 0)
			lag += ps->hi - ps->lo;
		else
			lag_known = false;
	}
	if (nassigned > 0 && lag_known)
		snprintf(detail + len, sizeof(detail) - len, "; lag " INT64_FORMAT, lag);

	if (h->outage && h->topic_missing)
		snprintf(detail, sizeof(detail), "topic %s does not exist (yet); waiting", cfg.topic);
	else if (h->outage)
		strlcpy(detail, "kafka unreachable or failing; librdkafka reconnects", sizeof(detail));
	else if (!joined)
		snprintf(detail, sizeof(detail), "joining group %s for topic %s", cfg.group_id, cfg.topic);
	else if (nassigned == 0)
		snprintf(detail, sizeof(detail), "topic %s: no partitions assigned", cfg.topic);
	iotpipe_set_state(h->outage ? (h->topic_missing ? IOT_STATE_WAITING : IOT_STATE_BACKOFF) :
					  !joined ? IOT_STATE_WAITING : nassigned == 0 ? IOT_STATE_IDLE : IOT_STATE_RUNNING,
					  detail);
}

static void
note_error(Health *h, rd_kafka_resp_err_t err, const char *text)
{
	bool		topic = is_topic_error(err);

	iotpipe_set_error("kafka: %s", text);
	/* errors that mean "cannot reach the data": connections, topic */
	if (!topic && err != RD_KAFKA_RESP_ERR__TRANSPORT && err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN &&
		err != RD_KAFKA_RESP_ERR__RESOLVE && err != RD_KAFKA_RESP_ERR__TIMED_OUT &&
		err != RD_KAFKA_RESP_ERR__AUTHENTICATION && err != RD_KAFKA_RESP_ERR__SSL &&
		err != RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED &&
		err != RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE)
	{
		ereport(LOG, (errmsg("%s: %s", who, text)));
		return;
	}
	if (!h->outage || h->topic_missing != topic)
	{
		ereport(LOG,
				(errmsg("%s: %s", who, text),
				 topic ? errhint("Create the topic; the worker picks it up within seconds.") :
				 errhint("librdkafka keeps reconnecting; the worker resumes at the stored offsets.")));
		h->since = GetCurrentTimestamp();
	}
	h->outage = true;
	h->topic_missing = topic;
	h->last_probe = GetCurrentTimestamp();
}

static void
clear_outage(Health *h)
{
	if (!h->outage)
		return;
	ereport(LOG,
			(errmsg("%s: kafka reachable again after %.1f s", who,
					(double) (GetCurrentTimestamp() - h->since) / USECS_PER_SEC)));
	h->outage = false;
	h->topic_missing = false;
	iotpipe_clear_error();
}

/* ask the broker for the topic's metadata: true when it answers and the topic exists */
static bool
probe(Consumer *c, Health *h)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err;
	bool		ok = false;

	h->last_probe = GetCurrentTimestamp();
	err = rd_kafka_metadata(c->rk, 0, c->rkt, &md, 1500);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md != NULL)
	{
		if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
			md->topics[0].partition_cnt > 0)
			ok = true;
		else if (md->topic_cnt == 1 && md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			h->topic_missing = is_topic_error(md->topics[0].err);
			iotpipe_set_error("kafka: topic %s: %s", cfg.topic, rd_kafka_err2str(md->topics[0].err));
		}
	}
	if (md)
		rd_kafka_metadata_destroy(md);
	return ok;
}

/*
 * One message from the consumer: into the batch (true), or an error event,
 * or not ours (false).  new_batch: it is the first of a batch.
 */
static bool
take_message(Consumer *c, IotBatch *batch, rd_kafka_message_t *m, Health *h, bool joined,
			 bool new_batch)
{
	IotSource	src = {.source = "kafka", .topic = cfg.topic};
	PartState  *ps = part_state(c, m->partition);

	if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET && ps != NULL && ps->assigned)
	{
		/*
		 * The stored offset is out of the log's range (retention deleted it,
		 * or the topic was re-created): librdkafka went to auto.offset.reset;
		 * take what comes from there.
		 */
		ps->pos = -1;
		ereport(WARNING,
				(errmsg("%s: partition %d: %s", who, m->partition, rd_kafka_message_errstr(m)),
				 errdetail("The stored next offset was " INT64_FORMAT "; consumption goes on from where auto.offset.reset points.",
						   ps->committed)));
		iotpipe_set_error("kafka: partition %d: %s", m->partition, rd_kafka_message_errstr(m));
		return false;
	}
	if (m->err)
	{
		if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
		{
			note_error(h, m->err, rd_kafka_message_errstr(m));
			publish_state(c, h, joined);
		}
		return false;
	}
	/* not ours any more, or already in the batch / committed */
	if (ps == NULL || !ps->assigned || (ps->pos >= 0 && m->offset < ps->pos))
		return false;

	if (new_batch)
		iotpipe_batch_reset(batch);
	src.partition = m->partition;
	src.offset = m->offset;
	if (m->payload == NULL)
		iotpipe_batch_reject(batch, "", 0, &src, "message has a null value");
	else if (m->len > (size_t) iotpipe_kafka_max_message_bytes)
	{
		char		reason[128];

		snprintf(reason, sizeof(reason), "message too large: %zu bytes (limit %d)",
				 m->len, iotpipe_kafka_max_message_bytes);
		iotpipe_batch_reject(batch, m->payload, m->len, &src, reason);
	}
	else
		iotpipe_batch_add(batch, m->payload, m->len, &src);
	ps->pos = ps->batch_next = m->offset + 1;
	ps->in_batch = true;
	return true;
}

static SessionEnd
run_session(Consumer *c, IotBatch *batch, bool *broker_down)
{
	rd_kafka_message_t **msgs = NULL;
	int			msgs_cap = 0;
	Health		health = {0};
	TimestampTz batch_started = 0;
	TimestampTz last_tick = 0;
	TimestampTz last_sensors = 0;
	bool		joined = false;
	bool		wm_due = false;
	int			count = 0;
	SessionEnd	end = SESSION_STOP;

	publish_state(c, &health, false);

	while (!should_stop())
	{
		TimestampTz now;
		long		timeout_ms;
		ssize_t		n,
					i;
		int			want;

		handle_interrupts();
		serve_logs(c);

		if (msgs_cap < iotpipe_batch_size)
		{
			msgs_cap = iotpipe_batch_size;
			msgs = msgs ? repalloc(msgs, sizeof(*msgs) * msgs_cap) : palloc(sizeof(*msgs) * msgs_cap);
		}

		now = GetCurrentTimestamp();
		timeout_ms = iotpipe_kafka_poll_ms;
		if (count > 0)
		{
			long		left = (long) ((batch_started + (int64) iotpipe_flush_interval_ms * 1000 - now) / 1000);

			timeout_ms = Max(0, Min(timeout_ms, left));
		}
		/*
		 * The batch call waits until it has all it was asked for or the
		 * timeout: with no batch open ask for one message, so that a batch
		 * starts as soon as anything arrives and is flushed at most
		 * iotpipe.flush_interval later (alert latency), not a poll timeout.
		 */
		want = (count == 0) ? 1 : Max(1, iotpipe_batch_size - count);
		n = rd_kafka_consume_batch_queue(c->q, (int) timeout_ms, msgs, Min(want, msgs_cap));
		if (n < 0)
		{
			iotpipe_set_error("kafka: %s", rd_kafka_err2str(rd_kafka_last_error()));
			end = SESSION_FAILED;
			break;
		}

		if (c->err_pending)
		{
			c->err_pending = false;
			if (c->err_fatal)
			{
				char		fatal[256];

				rd_kafka_fatal_error(c->rk, fatal, sizeof(fatal));
				iotpipe_set_error("kafka fatal error: %s", fatal);
				ereport(LOG, (errmsg("%s: fatal kafka error: %s", who, fatal)));
				end = SESSION_FAILED;
				for (i = 0; i < n; i++)
					rd_kafka_message_destroy(msgs[i]);
				break;
			}
			note_error(&health, c->err_code, c->err_text);
			publish_state(c, &health, joined);
		}

		if (c->rebalanced)
		{
			/* drop what this call returned and the partial batch (see header) */
			c->rebalanced = false;
			joined = true;
			for (i = 0; i < n; i++)
				rd_kafka_message_destroy(msgs[i]);
			if (count > 0)
				iotpipe_batch_reset(batch);
			count = 0;
			for (i = 0; i < c->nparts; i++)
				c->parts[i].in_batch = false;
			if (c->rebalance_failed || (n > 0 && !resync_assignment(c)))
			{
				end = SESSION_FAILED;
				break;
			}
			publish_state(c, &health, joined);
			continue;
		}

		for (i = 0; i < n; i++)
		{
			if (take_message(c, batch, msgs[i], &health, joined, count == 0))
			{
				if (count++ == 0)
					batch_started = GetCurrentTimestamp();
			}
			rd_kafka_message_destroy(msgs[i]);
		}
		/* nothing to ingest: write the sensors the ingest core held back */
		if (n == 0 && count == 0 && iotpipe_sensors_pending() &&
			GetCurrentTimestamp() - last_sensors >= (int64) iotpipe_sensor_refresh_ms * 250)
		{
			bool		all = false;

			last_sensors = GetCurrentTimestamp();
			(void) in_xact(write_sensors_tx, &all, "writing sensors");
		}
		if (count > 0 && health.outage)
		{
			clear_outage(&health);
			publish_state(c, &health, joined);
		}

		now = GetCurrentTimestamp();
		if (now - last_tick >= USECS_PER_SEC)
		{
			last_tick = now;
			iotpipe_update_rate();
			if (refresh_watermarks(c))
				wm_due = true;
			if (health.outage && now - health.last_probe >= 3 * USECS_PER_SEC)
			{
				if (probe(c, &health))
					clear_outage(&health);
			}
			if (wm_due && count == 0 && !health.outage)
			{
				if (in_xact(write_watermarks_tx, c, "publishing watermarks"))
					watermarks_written(c);
				wm_due = false;
			}
			publish_state(c, &health, joined);
		}

		if (count > 0 &&
			(count >= iotpipe_batch_size ||
			 now - batch_started >= (int64) iotpipe_flush_interval_ms * 1000))
		{
			bool		fenced;
			bool		ok = commit_batch(c, batch, wm_due, &fenced);

			count = 0;
			if (!ok)
			{
				end = fenced ? SESSION_FENCED : SESSION_FAILED;
				break;
			}
			wm_due = false;
		}
	}

	/* asked to stop: keep what was consumed */
	if (end == SESSION_STOP && count > 0)
	{
		bool		fenced;

		(void) commit_batch(c, batch, false, &fenced);
	}
	if (msgs)
		pfree(msgs);
	*broker_down = health.outage || c->err_fatal;
	return end;
}

void
iotpipe_kafka_main(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	IotWorkerSlot *slot;
	int			source_id;
	int			index;
	IotBatch   *batch;
	int			backoff_ms = 1000;

	iotpipe_worker_init(slotno, IOT_WORKER_KAFKA);
	slot = iotpipe_slot(slotno);
	source_id = slot->key;
	index = slot->index;
	snprintf(who, sizeof(who), "iotpipe kafka worker \"%s\"", slot->name);
	log_who = who;
	pgstat_report_appname("iotpipe kafka");

	workcxt = AllocSetContextCreate(TopMemoryContext, "iotpipe kafka", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(workcxt);

	if (!in_xact(read_source_tx, &source_id, "reading the source") ||
		cfg.topic == NULL || !cfg.enabled)
	{
		iotpipe_set_state(IOT_STATE_STOPPED, "source disabled or removed");
		proc_exit(0);
	}
	iotpipe_clear_error();
	ereport(LOG,
			(errmsg("%s started: topic %s, group %s", who, cfg.topic, cfg.group_id)));

	batch = iotpipe_batch_create(workcxt);
	while (!should_stop())
	{
		char		errbuf[512];
		Consumer   *c;
		SessionEnd	end;
		bool		broker_down;

		c = consumer_create(index, errbuf, sizeof(errbuf));
		if (c == NULL)
		{
			iotpipe_set_error("kafka consumer: %s", errbuf);
			iotpipe_set_state(IOT_STATE_BACKOFF, "cannot create the kafka consumer");
			ereport(LOG, (errmsg("%s: could not create the kafka consumer: %s", who, errbuf)));
			kafka_wait(backoff_ms);
			backoff_ms = Min(backoff_ms * 2, 30000);
			continue;
		}
		made_progress = false;
		end = run_session(c, batch, &broker_down);
		consumer_destroy(c, broker_down);
		iotpipe_batch_reset(batch);
		if (end == SESSION_STOP)
			break;
		if (made_progress)
			backoff_ms = 1000;
		if (end == SESSION_FENCED)
		{
			ereport(LOG, (errmsg("%s: re-reading stored offsets after a concurrent commit", who)));
			kafka_wait(100);
			continue;
		}
		iotpipe_set_state(IOT_STATE_BACKOFF, "restarting the kafka consumer after an error");
		kafka_wait(backoff_ms);
		backoff_ms = Min(backoff_ms * 2, 30000);
	}

	if (iotpipe_sensors_pending())
	{
		/* leave iotpipe.sensors complete: write what was held back */
		bool		all = true;

		(void) in_xact(write_sensors_tx, &all, "writing sensors");
	}
	ereport(LOG, (errmsg("%s stopping", who)));
	iotpipe_set_state(IOT_STATE_STOPPED, NULL);
	proc_exit(0);
}

void
iotpipe_kafka_init(void)
{
}

/* ---------- the producer (simulator's kafka sink) ---------- */

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

	log_who = "iotpipe simulator (kafka sink)";

	if (!conf_set(conf, "bootstrap.servers", brokers, errbuf, errlen) ||
		!conf_set(conf, "linger.ms", "5", errbuf, errlen) ||
		!conf_set(conf, "enable.idempotence", "true", errbuf, errlen) ||
		!conf_set(conf, "client.id", "iotpipe-simulator", errbuf, errlen) ||
		!conf_set(conf, "log.queue", "true", errbuf, errlen) ||
		!conf_set(conf, "partitioner", "murmur2_random", errbuf, errlen))
	{
		rd_kafka_conf_destroy(conf);
		pfree(p);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, rk_log_cb);
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
	emit_logs();
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
	emit_logs();
	pfree(p);
}
