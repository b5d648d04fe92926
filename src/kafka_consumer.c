/*-------------------------------------------------------------------------
 *
 * kafka_consumer.c
 *	  The Kafka consumer worker, exactly once.  Design and guarantees:
 *	  docs/kafka.md.
 *
 *	  The workers of a source (iotpipe.kafka_sources, started by the
 *	  launcher) form one consumer group, eager rebalancing, static members.
 *	  iotpipe.kafka_offsets is the only truth: each batch's rows, dead
 *	  letters and per-partition next_offset commit in one transaction, and
 *	  the offsets upsert is fenced (kafka_offsets.c), so a batch raced by a
 *	  rebalance rolls back.
 *
 *	  Waiting: the worker waits in the worker runtime's one wait primitive,
 *	  on its latch and on a pipe at once.  librdkafka writes a byte to the
 *	  pipe when an element lands on the empty consumer queue (or log queue)
 *	  (rd_kafka_queue_io_event_enable); the loop drains the pipe, then
 *	  consumes without blocking.  It only waits while the consumer queue is
 *	  empty (otherwise no further byte would come), so SIGTERM, SIGHUP and a
 *	  stop by the launcher end a wait at once, whatever
 *	  iotpipe.kafka_poll_timeout says.
 *
 *	  Threads: everything librdkafka calls back into runs on our thread,
 *	  inside our own librdkafka calls, never inside a transaction of ours.
 *	  The main queue is forwarded to the consumer queue (rebalance, error
 *	  and commit callbacks are served by rd_kafka_consume_batch_queue); log
 *	  lines go to a queue of their own, drained by the loop, and are only
 *	  copied by the callback (kafka_common.c).  The rebalance callback reads
 *	  the stored offsets in a transaction of its own (no error ever unwinds
 *	  through librdkafka) and puts them into the assignment list.
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
#include "shmem.h"
#include "status.h"
#include "worker.h"
#include "kafka_common.h"
#include "kafka_offsets.h"
#include "sensors.h"
#include "kafka_consumer.h"

#include <fcntl.h>
#include <unistd.h>
#include <librdkafka/rdkafka.h>

#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct Consumer
{
	rd_kafka_t *rk;
	rd_kafka_queue_t *q;		/* consumer queue (main queue forwarded here) */
	rd_kafka_queue_t *logq;
	rd_kafka_topic_t *rkt;		/* for metadata probes */
	IotKafkaParts parts;
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

static IotKafkaSource src;
static MemoryContext workcxt;
static char who[IOTPIPE_NAMELEN + 32];
static bool made_progress = false;

/* ---------- the wake-up pipe librdkafka writes to ---------- */

static int	wake_fd[2] = {-1, -1};

static void
wake_open(void)
{
	int			i;

	if (pipe(wake_fd) != 0)
		ereport(FATAL,
				(errcode_for_socket_access(),
				 errmsg("%s: could not create a pipe: %m", who)));
	for (i = 0; i < 2; i++)
		if (fcntl(wake_fd[i], F_SETFL, O_NONBLOCK) != 0 ||
			fcntl(wake_fd[i], F_SETFD, FD_CLOEXEC) != 0)
			ereport(FATAL,
					(errcode_for_socket_access(),
					 errmsg("%s: could not set up the wake-up pipe: %m", who)));
}

/* read what librdkafka wrote (the pipe is non-blocking) */
static void
wake_drain(void)
{
	char		buf[64];

	while (read(wake_fd[0], buf, sizeof(buf)) > 0)
		;
}

/*
 * Sleep up to ms, or until a signal or the launcher sets the latch.  Between
 * consumers nothing writes to the pipe; waiting on it too keeps the worker
 * runtime's wait set as it is.
 */
static void
pause_ms(long ms)
{
	wake_drain();
	(void) iotpipe_worker_wait(ms, wake_fd[0]);
}

/* ---------- librdkafka callbacks: on our thread, inside our calls ---------- */

/* runs inside rd_kafka_consume_batch_queue() or close */
static void
rk_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
				rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
	Consumer   *c = (Consumer *) opaque;

	c->rebalanced = true;
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && !c->closing)
	{
		if (iotpipe_kafka_load_offsets(&src, &c->parts, partitions))
		{
			rd_kafka_assign(rk, partitions);
			return;
		}
		c->rebalance_failed = true;
	}
	iotpipe_kafka_unassign_all(&c->parts);
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

/* ---------- the consumer ---------- */

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
	c->parts.n = 0;
	c->parts.p = MemoryContextAllocZero(workcxt, sizeof(IotKafkaPart));
	(void) iotpipe_kafka_part(&c->parts, 15);

	err = iotpipe_kafka_apply_options(conf, src.nopts, src.keys, src.vals, src.files);
	if (err)
	{
		strlcpy(errbuf, err, errlen);
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	for (i = 0; consumer_defaults[i][0]; i++)
	{
		for (j = 0; j < src.nopts; j++)
			if (strcmp(src.keys[j], consumer_defaults[i][0]) == 0)
				break;
		if (j == src.nopts &&
			!iotpipe_kafka_conf_set(conf, consumer_defaults[i][0], consumer_defaults[i][1],
									errbuf, errlen))
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
	snprintf(client_id, sizeof(client_id), "iotpipe-%s-%d", src.topic, index + 1);
	if (!iotpipe_kafka_conf_set(conf, "bootstrap.servers", src.brokers, errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "group.id", src.group_id, errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "client.id", client_id, errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "group.instance.id", client_id, errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "enable.auto.commit", "false", errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "enable.auto.offset.store", "false", errbuf, errlen) ||
		!iotpipe_kafka_conf_set(conf, "log.queue", "true", errbuf, errlen))
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, iotpipe_kafka_log_cb);
	rd_kafka_conf_set_error_cb(conf, rk_error_cb);
	rd_kafka_conf_set_rebalance_cb(conf, rk_rebalance_cb);
	rd_kafka_conf_set_offset_commit_cb(conf, rk_commit_cb);
	rd_kafka_conf_set_opaque(conf, c);

	c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errbuf, errlen);
	if (c->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		iotpipe_kafka_emit_logs();
		return NULL;
	}
	/* conf is owned by rk from here */
	c->logq = rd_kafka_queue_new(c->rk);
	rd_kafka_set_log_queue(c->rk, c->logq);
	rd_kafka_poll_set_consumer(c->rk);
	c->q = rd_kafka_queue_get_consumer(c->rk);
	/* both are final queues (nothing forwards them on): wake us through the pipe */
	wake_drain();
	rd_kafka_queue_io_event_enable(c->q, wake_fd[1], "1", 1);
	rd_kafka_queue_io_event_enable(c->logq, wake_fd[1], "1", 1);
	c->rkt = rd_kafka_topic_new(c->rk, src.topic, NULL);

	sub = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(sub, src.topic, RD_KAFKA_PARTITION_UA);
	rerr = rd_kafka_subscribe(c->rk, sub);
	rd_kafka_topic_partition_list_destroy(sub);
	if (rerr)
	{
		snprintf(errbuf, errlen, "could not subscribe to topic \"%s\": %s",
				 src.topic, rd_kafka_err2str(rerr));
		if (c->rkt)
			rd_kafka_topic_destroy(c->rkt);
		rd_kafka_queue_io_event_enable(c->q, -1, NULL, 0);
		rd_kafka_queue_io_event_enable(c->logq, -1, NULL, 0);
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
	iotpipe_kafka_emit_logs();
}

/* leave the group (bounded in time), then free the client */
static void
consumer_destroy(Consumer *c, bool broker_down)
{
	rd_kafka_queue_t *cq = rd_kafka_queue_new(c->rk);
	rd_kafka_error_t *error;
	TimestampTz deadline = GetCurrentTimestamp() + (broker_down ? 2 : 10) * USECS_PER_SEC;

	c->closing = true;
	/* the consumer queue is forwarded to cq now; the loop below serves cq */
	rd_kafka_queue_io_event_enable(c->q, -1, NULL, 0);
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
			ssize_t		n = rd_kafka_consume_batch_queue(cq, 20, msgs, lengthof(msgs));

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
	rd_kafka_queue_io_event_enable(c->logq, -1, NULL, 0);
	rd_kafka_queue_destroy(c->logq);
	rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	iotpipe_kafka_emit_logs();
	wake_drain();
	pfree(c->parts.p);
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
		ok = iotpipe_kafka_load_offsets(&src, &c->parts, list);
		if (ok)
			ok = (rd_kafka_assign(c->rk, list) == RD_KAFKA_RESP_ERR_NO_ERROR);
	}
	rd_kafka_topic_partition_list_destroy(list);
	return ok;
}

/* refresh cached watermarks; true if any changed since last written */
static bool
refresh_watermarks(Consumer *c)
{
	bool		changed = false;
	int			i;

	for (i = 0; i < c->parts.n; i++)
	{
		IotKafkaPart *ps = &c->parts.p[i];
		int64_t		lo,
					hi;

		if (!ps->assigned)
			continue;
		if (rd_kafka_get_watermark_offsets(c->rk, src.topic, i, &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR)
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

/*
 * Write the pending batch, its offsets (and changed watermarks) in one
 * transaction.  Never throws; false if nothing was committed.
 */
static bool
commit_batch(Consumer *c, IotBatch *batch, bool with_watermarks, bool *fenced)
{
	rd_kafka_topic_partition_list_t *kcommit;
	uint64		accepted,
				rejected;
	int			i;

	if (!iotpipe_kafka_commit_batch(src.topic, &c->parts, batch, with_watermarks,
									&accepted, &rejected, fenced))
	{
		if (!*fenced)
			iotpipe_set_state(IOT_STATE_BACKOFF, "batch failed; consuming again from the stored offsets");
		ereport(LOG,
				(errmsg("%s: nothing of a batch of %d messages was committed", who, iotpipe_batch_count(batch)),
				 errdetail("It is consumed again from the stored offsets.")));
		return false;
	}
	made_progress = true;
	iotpipe_count(accepted + rejected, accepted, rejected);

	/* tell Kafka too, for lag tooling; asynchronous, never read back */
	kcommit = rd_kafka_topic_partition_list_new(4);
	for (i = 0; i < c->parts.n; i++)
	{
		IotKafkaPart *ps = &c->parts.p[i];

		if (!ps->in_batch)
			continue;
		ps->committed = ps->batch_next;
		ps->in_batch = false;
		rd_kafka_topic_partition_list_add(kcommit, src.topic, i)->offset = ps->batch_next;
	}
	if (kcommit->cnt > 0)
		(void) rd_kafka_commit(c->rk, kcommit, 1);
	rd_kafka_topic_partition_list_destroy(kcommit);
	return true;
}

static void
fold_sensors_tx(void *arg)
{
	iotpipe_sensors_fold_own();
}

/* ---------- health, published to iotpipe.status ---------- */

static bool
is_topic_error(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
		err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
		err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
}

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

	for (i = 0; i < c->parts.n; i++)
	{
		IotKafkaPart *ps = &c->parts.p[i];

		if (!ps->assigned)
			continue;
		if (nassigned == 0)
			len = snprintf(detail, sizeof(detail), "topic %s partitions %d", src.topic, i);
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
		snprintf(detail, sizeof(detail), "topic %s does not exist (yet); waiting", src.topic);
	else if (h->outage)
		strlcpy(detail, "kafka unreachable or failing; librdkafka reconnects", sizeof(detail));
	else if (!joined)
		snprintf(detail, sizeof(detail), "joining group %s for topic %s", src.group_id, src.topic);
	else if (nassigned == 0)
		snprintf(detail, sizeof(detail), "topic %s: no partitions assigned", src.topic);
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
			iotpipe_set_error("kafka: topic %s: %s", src.topic, rd_kafka_err2str(md->topics[0].err));
		}
	}
	if (md)
		rd_kafka_metadata_destroy(md);
	return ok;
}


/* ---------- the loop ---------- */

/*
 * One message from the consumer: into the batch (true), or an error event,
 * or not ours (false).  new_batch: it is the first of a batch.  The ingest
 * core decides about the value (iotpipe.max_message_size included).
 */
static bool
take_message(Consumer *c, IotBatch *batch, rd_kafka_message_t *m, Health *h, bool joined,
			 bool new_batch)
{
	IotSource	msrc = {.source = "kafka", .topic = src.topic};
	IotKafkaPart *ps = iotpipe_kafka_part(&c->parts, m->partition);

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
	msrc.partition = m->partition;
	msrc.offset = m->offset;
	if (m->payload == NULL)
		iotpipe_batch_reject(batch, "", 0, &msrc, "message has a null value");
	else
		iotpipe_batch_add(batch, m->payload, m->len, &msrc);
	ps->pos = ps->batch_next = m->offset + 1;
	ps->in_batch = true;
	return true;
}

/* milliseconds from now to then, rounded up; 0 if then has passed */
static long
ms_until(TimestampTz now, TimestampTz then)
{
	return then > now ? (long) ((then - now + 999) / 1000) : 0;
}

static SessionEnd
run_session(Consumer *c, IotBatch *batch, bool *broker_down)
{
	rd_kafka_message_t **msgs = NULL;
	int			msgs_cap = 0;
	Health		health = {0};
	TimestampTz batch_started = 0;
	TimestampTz last_tick = 0;
	bool		joined = false;
	bool		wm_due = false;
	int			count = 0;
	SessionEnd	end = SESSION_STOP;

	publish_state(c, &health, false);

	while (!iotpipe_worker_should_stop())
	{
		TimestampTz now;
		long		timeout_ms;
		ssize_t		n,
					i;

		serve_logs(c);

		if (msgs_cap < iotpipe_batch_size)
		{
			msgs_cap = iotpipe_batch_size;
			msgs = msgs ? repalloc(msgs, sizeof(*msgs) * msgs_cap) : palloc(sizeof(*msgs) * msgs_cap);
		}

		/*
		 * Wait for the queue, the latch (signals, the launcher) or the next
		 * deadline: the once-a-second tick, and with a batch open its flush
		 * (iotpipe.flush_interval after its first message: alert latency).
		 * Only while the queue is empty: librdkafka writes to the pipe when
		 * an empty queue gets an element, so a queue left non-empty would
		 * never wake us.
		 */
		now = GetCurrentTimestamp();
		timeout_ms = Min((long) iotpipe_kafka_poll_ms, ms_until(now, last_tick + USECS_PER_SEC));
		if (count > 0)
			timeout_ms = Min(timeout_ms,
							 ms_until(now, batch_started + (int64) iotpipe_flush_interval_ms * 1000));
		if (timeout_ms > 0 && rd_kafka_queue_length(c->q) == 0)
			(void) iotpipe_worker_wait(timeout_ms, wake_fd[0]);
		else
			iotpipe_worker_handle_interrupts();

		/* drain first: an element queued after this wakes the next wait */
		wake_drain();
		n = rd_kafka_consume_batch_queue(c->q, 0, msgs,
										 Min(Max(1, iotpipe_batch_size - count), msgs_cap));
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
			for (i = 0; i < c->parts.n; i++)
				c->parts.p[i].in_batch = false;
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
				(void) iotpipe_kafka_publish_watermarks(src.topic, &c->parts);
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
	iotpipe_kafka_log_as(who);
	pgstat_report_appname("iotpipe kafka");

	workcxt = AllocSetContextCreate(TopMemoryContext, "iotpipe kafka", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(workcxt);

	if (!iotpipe_kafka_read_source(source_id, &src, workcxt) ||
		src.topic == NULL || !src.enabled)
	{
		iotpipe_set_state(IOT_STATE_STOPPED, "source disabled or removed");
		proc_exit(0);
	}
	iotpipe_clear_error();
	ereport(LOG,
			(errmsg("%s started: topic %s, group %s", who, src.topic, src.group_id)));

	wake_open();
	batch = iotpipe_batch_create(workcxt);
	while (!iotpipe_worker_should_stop())
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
			pause_ms(backoff_ms);
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
			pause_ms(100);
			continue;
		}
		iotpipe_set_state(IOT_STATE_BACKOFF, "restarting the kafka consumer after an error");
		pause_ms(backoff_ms);
		backoff_ms = Min(backoff_ms * 2, 30000);
	}

	/* leave iotpipe.sensors complete: fold this worker's deltas */
	(void) iotpipe_worker_xact(fold_sensors_tx, NULL, "folding sensor deltas", true);
	ereport(LOG, (errmsg("%s stopping", who)));
	iotpipe_set_state(IOT_STATE_STOPPED, NULL);
	proc_exit(0);
}
