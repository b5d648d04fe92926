/*-------------------------------------------------------------------------
 *
 * delivery_worker.c
 *	  The notifier: a dynamic background worker, started by the launcher
 *	  while any receiver is enabled, that delivers the due rows of the
 *	  outbox iotpipe.notifications with libcurl, several in flight.
 *
 *	  One loop, everything on the worker's own thread:
 *	    - a transaction records the outcomes of finished requests (the
 *	      row's state, attempts, next_attempt_at, last_error; one row in
 *	      iotpipe.notification_attempts per attempt) and claims due rows up
 *	      to iotpipe.notify_concurrency in flight.  A row is due when it is
 *	      pending, its next_attempt_at has come and no earlier row of the
 *	      same alert and receiver is pending (a resolve never overtakes its
 *	      fire).  Claiming takes no lock: there is one notifier (its slot).
 *	    - requests run on a curl multi handle outside any transaction;
 *	      curl's sockets sit in an epoll set whose descriptor is the one
 *	      socket iotpipe_worker_wait() waits on, next to the latch, so a
 *	      SIGTERM, a reload or a commit that queued rows (which sets the
 *	      latch, delivery_outbox.c) ends the wait at once, whatever is in
 *	      flight.  DNS resolution is libcurl's threaded resolver: no call
 *	      blocks.
 *	    - a failure is retried after iotpipe.notify_retry_base * 2^(n-1)
 *	      (at most iotpipe.notify_retry_max), drawn between half and all of
 *	      it; after iotpipe.notify_max_attempts attempts, or when older
 *	      than iotpipe.notify_max_age, the row is failed, with its reason.
 *
 *	  Delivery is at least once: a request whose outcome was not committed
 *	  yet (kill -9, crash, stop) is sent again, with the same idempotency
 *	  key, by the next notifier.  Nothing committed is lost: the rows were
 *	  written by the alert's own transaction.
 *
 *	  iotpipe.status (kind and worker "notifier"): messages = attempts,
 *	  rows = delivered, rejected = failed, detail = in flight and pending.
 *	  States: starting -> idle <-> running -> stopped; waiting when the
 *	  SQL does not match the library.  See src/README.md.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "delivery_send.h"
#include "guc.h"
#include "spiutil.h"
#include "status.h"
#include "version.h"
#include "worker.h"
#include "delivery_worker.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define MAX_EPOLL_EVENTS	64
#define OUTCOME_FLUSH_US	(20 * 1000)	/* record finished requests within 20 ms */
#define OUTCOME_FLUSH_N		64
#define HOUSEKEEPING_US		(1000 * 1000)

typedef struct Inflight
{
	MemoryContext cxt;
	DeliveryJob job;
	char		receiver[IOTPIPE_NAMELEN * 2];
	TimestampTz created_at;
} Inflight;

typedef struct Outcome
{
	int64		id;
	int32		attempt;
	bool		ok;
	int32		status;
	char		error[IOTPIPE_ERRLEN];
	double		ms;
	TimestampTz at;
	TimestampTz created_at;
} Outcome;

/* the worker's state, in its long-lived context */
static MemoryContext notifier_cxt = NULL;
static CURLM *multi = NULL;
static int	epfd = -1;
static TimestampTz curl_timer_at = -1;	/* -1: no timer */
static Inflight **inflight = NULL;
static int	ninflight = 0;
static int	inflight_cap = 0;
static Outcome *outcomes = NULL;
static int	noutcomes = 0;
static int	outcomes_cap = 0;
static TimestampTz oldest_outcome = 0;

/* one transaction's work */
typedef struct TxState
{
	bool		version_ok;
	char		detail[IOTPIPE_ERRLEN];
	bool		claim;
	bool		housekeeping;
	int			claimed;
	int			asked;
	TimestampTz next_due;		/* earliest pending row not claimed, 0 = none */
	int			recorded;		/* outcomes[0 .. recorded) are committed with it */
	int64		pending;
	int64		sent;
	int64		failed;
} TxState;

static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_plan = NULL;

/* ---------- curl's sockets and timer ---------- */

static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(epfd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev) != 0)
		(void) epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev);
	return 0;
}

static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	curl_timer_at = timeout_ms < 0 ? -1 : GetCurrentTimestamp() + (TimestampTz) timeout_ms * 1000;
	return 0;
}

static void
setup_curl(void)
{
	iotpipe_delivery_global_init();
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create an epoll set: %m")));
	multi = curl_multi_init();
	if (multi == NULL)
		ereport(ERROR, (errcode(ERRCODE_SYSTEM_ERROR), errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
}

/* ---------- outcomes ---------- */

static void
add_outcome(int64 id, int attempt, const DeliveryJob *job, TimestampTz created_at)
{
	Outcome    *o;

	if (noutcomes == outcomes_cap)
	{
		outcomes_cap = Max(64, outcomes_cap * 2);
		outcomes = outcomes ? repalloc(outcomes, sizeof(Outcome) * outcomes_cap)
			: MemoryContextAlloc(notifier_cxt, sizeof(Outcome) * outcomes_cap);
	}
	if (noutcomes == 0)
		oldest_outcome = GetCurrentTimestamp();
	o = &outcomes[noutcomes++];
	o->id = id;
	o->attempt = attempt;
	o->ok = job->ok;
	o->status = (int32) job->status;
	strlcpy(o->error, job->error, sizeof(o->error));
	o->ms = job->ms;
	o->at = job->started;
	o->created_at = created_at;
}

/* the first n outcomes are committed */
static void
forget_outcomes(int n)
{
	if (n >= noutcomes)
		noutcomes = 0;
	else
	{
		memmove(outcomes, outcomes + n, sizeof(Outcome) * (noutcomes - n));
		noutcomes -= n;
	}
	if (noutcomes > 0)
		oldest_outcome = GetCurrentTimestamp();
}

/* exponential backoff with jitter: base * 2^(attempt-1), capped, times [0.5, 1) */
static TimestampTz
retry_at(TimestampTz now, int attempt)
{
	double		delay = (double) iotpipe_notify_retry_base_ms;
	int			i;

	for (i = 1; i < attempt && delay < iotpipe_notify_retry_max_ms; i++)
		delay *= 2;
	delay = Min(delay, (double) iotpipe_notify_retry_max_ms);
	delay *= 0.5 + 0.5 * pg_prng_double(&pg_global_prng_state);
	return now + (TimestampTz) (delay * 1000.0);
}

static void
record_outcomes(TxState *tx)
{
	int			n = tx->recorded,
				i,
				ret;
	TimestampTz now = GetCurrentTimestamp();
	Datum	   *ids = palloc(sizeof(Datum) * n),
			   *att = palloc(sizeof(Datum) * n),
			   *oks = palloc(sizeof(Datum) * n),
			   *sts = palloc(sizeof(Datum) * n),
			   *errs = palloc(sizeof(Datum) * n),
			   *mss = palloc(sizeof(Datum) * n),
			   *ats = palloc(sizeof(Datum) * n),
			   *states = palloc(sizeof(Datum) * n),
			   *nexts = palloc(sizeof(Datum) * n);
	bool	   *stnull = palloc(sizeof(bool) * n),
			   *errnull = palloc(sizeof(bool) * n),
			   *nextnull = palloc(sizeof(bool) * n);
	Datum		args[9];

	for (i = 0; i < n; i++)
	{
		Outcome    *o = &outcomes[i];
		const char *state = "pending";

		ids[i] = Int64GetDatum(o->id);
		att[i] = Int32GetDatum(o->attempt);
		oks[i] = BoolGetDatum(o->ok);
		sts[i] = Int32GetDatum(o->status);
		stnull[i] = (o->status == 0);
		mss[i] = Float8GetDatum(o->ms);
		ats[i] = TimestampTzGetDatum(o->at);
		nextnull[i] = true;
		nexts[i] = (Datum) 0;
		errnull[i] = o->ok;
		errs[i] = o->ok ? (Datum) 0 : CStringGetTextDatum(o->error);
		if (o->ok)
		{
			state = "sent";
			tx->sent++;
		}
		else if (o->attempt >= iotpipe_notify_max_attempts ||
				 now - o->created_at >= (int64) iotpipe_notify_max_age_s * USECS_PER_SEC)
		{
			state = "failed";
			tx->failed++;
			errs[i] = CStringGetTextDatum(psprintf("gave up after %d attempts%s: %s", o->attempt,
												   o->attempt >= iotpipe_notify_max_attempts ? ""
												   : " (older than iotpipe.notify_max_age)",
												   o->error));
		}
		else
		{
			nexts[i] = TimestampTzGetDatum(retry_at(now, o->attempt));
			nextnull[i] = false;
		}
		states[i] = CStringGetTextDatum(state);
	}
	if (record_plan == NULL)
	{
		Oid			types[9] = {INT8ARRAYOID, INT4ARRAYOID, BOOLARRAYOID, INT4ARRAYOID,
			TEXTARRAYOID, FLOAT8ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID,
		TIMESTAMPTZARRAYOID};

		record_plan = iotpipe_keep_plan(
										"WITH o AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
										"  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), "
										"  pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8), "
										"  pg_catalog.unnest($9)) AS o(id, attempt, ok, status, error, ms, at, state, next_at)), "
										"u AS (UPDATE iotpipe.notifications n "
										"   SET attempts = o.attempt, last_attempt_at = o.at, last_status = o.status, "
										"       state = o.state, last_error = o.error, "
										"       sent_at = CASE WHEN o.ok THEN pg_catalog.now() ELSE n.sent_at END, "
										"       next_attempt_at = coalesce(o.next_at, n.next_attempt_at) "
										"  FROM o WHERE n.notification_id = o.id AND n.state = 'pending' "
										"RETURNING n.notification_id) "
										"INSERT INTO iotpipe.notification_attempts "
										"  (notification_id, attempt, attempted_at, duration_ms, status, error) "
										"SELECT o.id, o.attempt, o.at, o.ms, o.status, o.error "
										"  FROM o JOIN u ON u.notification_id = o.id "
										"ON CONFLICT DO NOTHING",
										9, types, 0);
	}
	args[0] = iotpipe_byval_array(ids, NULL, n, INT8OID);
	args[1] = iotpipe_byval_array(att, NULL, n, INT4OID);
	args[2] = iotpipe_byval_array(oks, NULL, n, BOOLOID);
	args[3] = iotpipe_byval_array(sts, stnull, n, INT4OID);
	args[4] = iotpipe_text_array(errs, errnull, n);
	args[5] = iotpipe_float8_array(mss, NULL, n);
	args[6] = iotpipe_byval_array(ats, NULL, n, TIMESTAMPTZOID);
	args[7] = iotpipe_text_array(states, NULL, n);
	args[8] = iotpipe_byval_array(nexts, nextnull, n, TIMESTAMPTZOID);
	ret = SPI_execute_plan(record_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not record delivery attempts: %s", SPI_result_code_string(ret));
}

/* ---------- claiming ---------- */

static bool
add_handle(CURL *easy)
{
	sigset_t	saved;
	CURLMcode	rc;

	iotpipe_curl_enter(&saved);
	rc = curl_multi_add_handle(multi, easy);
	iotpipe_curl_leave(&saved);
	return rc == CURLM_OK;
}

static void
socket_action(curl_socket_t s, int flags)
{
	sigset_t	saved;
	int			running;

	iotpipe_curl_enter(&saved);
	(void) curl_multi_socket_action(multi, s, flags, &running);
	iotpipe_curl_leave(&saved);
}

static Datum
inflight_ids(void)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(ninflight, 1));
	int			i;

	for (i = 0; i < ninflight; i++)
		ids[i] = Int64GetDatum(inflight[i]->job.notification_id);
	return iotpipe_byval_array(ids, NULL, ninflight, INT8OID);
}

static char *
col(int row, int c)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, c);
}

static void
start_job(const DeliveryReceiver *r, int row)
{
	Inflight   *f;
	MemoryContext old;
	DeliveryMessage m;
	bool		isnull;
	int			attempts;

	f = MemoryContextAllocZero(notifier_cxt, sizeof(Inflight));
	f->cxt = AllocSetContextCreate(notifier_cxt, "iotpipe delivery", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(f->cxt);
	m.notification_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 1, &isnull));
	attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 4, &isnull));
	f->created_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 7, &isnull));
	strlcpy(f->receiver, r->name, sizeof(f->receiver));
	m.event = col(row, 3);
	m.key = col(row, 5);
	m.payload = col(row, 6);
	m.rule = col(row, 8);
	m.sensor_id = col(row, 9);
	m.location = col(row, 10);
	m.severity = col(row, 11);
	m.metric = col(row, 12);
	m.value = col(row, 13);
	m.threshold = col(row, 14);
	m.ts = col(row, 15);
	f->job.notification_id = m.notification_id;
	f->job.attempts = attempts;
	if (!iotpipe_delivery_prepare(&f->job, r, &m, iotpipe_notify_timeout_ms) ||
		!add_handle(f->job.easy))
	{
		/* never started: an attempt that failed at once */
		f->job.started = GetCurrentTimestamp();
		if (f->job.error[0] == '\0')
			strlcpy(f->job.error, "could not start the request", sizeof(f->job.error));
		add_outcome(m.notification_id, attempts + 1, &f->job, f->created_at);
		iotpipe_delivery_release(&f->job);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(f->cxt);
		pfree(f);
		return;
	}
	MemoryContextSwitchTo(old);
	if (ninflight == inflight_cap)
	{
		inflight_cap = Max(16, inflight_cap * 2);
		inflight = inflight ? repalloc(inflight, sizeof(Inflight *) * inflight_cap)
			: MemoryContextAlloc(notifier_cxt, sizeof(Inflight *) * inflight_cap);
	}
	inflight[ninflight++] = f;
}

static int
inflight_for(const char *receiver)
{
	int			i,
				n = 0;

	for (i = 0; i < ninflight; i++)
		if (strcmp(inflight[i]->receiver, receiver) == 0)
			n++;
	return n;
}

static void
claim(TxState *tx)
{
	int			room = iotpipe_notify_concurrency - ninflight;
	int			ret,
				nrcv,
				i;
	uint64		k,
				nrows;
	DeliveryReceiver *rcv;
	Datum		args[2];
	SPITupleTable *rows;
	int			per_receiver;

	if (room <= 0)
		return;
	/* the receivers, secrets included, only in this process's memory */
	ret = SPI_execute(psprintf("%s WHERE r.enabled", iotpipe_receiver_select), true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.receivers");
	nrcv = (int) SPI_processed;
	rcv = palloc0(sizeof(DeliveryReceiver) * Max(nrcv, 1));
	for (i = 0; i < nrcv; i++)
		iotpipe_receiver_from_spi(&rcv[i], i);
	/* one slow receiver does not hold every slot */
	per_receiver = nrcv > 1 ? Max(1, iotpipe_notify_concurrency / 2) : iotpipe_notify_concurrency;

	if (claim_plan == NULL)
	{
		Oid			types[2] = {INT8ARRAYOID, INT4OID};

		claim_plan = iotpipe_keep_plan(
									   "SELECT n.notification_id, n.receiver, n.event, n.attempts, "
									   "       n.idempotency_key::text, n.payload::text, n.created_at, "
									   "       n.payload ->> 'rule', n.payload ->> 'sensor_id', "
									   "       n.payload ->> 'location', n.payload ->> 'severity', "
									   "       n.payload ->> 'metric', n.payload ->> 'value', "
									   "       n.payload ->> 'threshold', n.payload ->> 'ts' "
									   "  FROM iotpipe.notifications n "
									   "  JOIN iotpipe.receivers v ON v.name = n.receiver AND v.enabled "
									   " WHERE n.state = 'pending' AND n.next_attempt_at <= pg_catalog.now() "
									   "   AND n.notification_id <> ALL ($1) "
									   "   AND NOT EXISTS (SELECT FROM iotpipe.notifications p "
									   "                    WHERE p.alert_id = n.alert_id AND p.receiver = n.receiver "
									   "                      AND p.state = 'pending' "
									   "                      AND p.notification_id < n.notification_id) "
									   " ORDER BY n.next_attempt_at, n.notification_id LIMIT $2",
									   2, types, 0);
	}
	/* read_only = false: a new snapshot that sees the outcomes just recorded */
	args[0] = inflight_ids();
	args[1] = Int32GetDatum(room * 2);
	tx->asked = room * 2;
	ret = SPI_execute_plan(claim_plan, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.notifications: %s", SPI_result_code_string(ret));
	rows = SPI_tuptable;
	nrows = SPI_processed;
	tx->claimed = (int) nrows;
	for (k = 0; k < nrows && ninflight < iotpipe_notify_concurrency; k++)
	{
		char	   *name;
		DeliveryReceiver *r = NULL;

		SPI_tuptable = rows;
		name = col((int) k, 2);
		for (i = 0; i < nrcv; i++)
			if (strcmp(rcv[i].name, name) == 0)
				r = &rcv[i];
		if (r == NULL || inflight_for(name) >= per_receiver)
			continue;
		start_job(r, (int) k);
	}
	SPI_tuptable = rows;

	/* when is the next row due (not counting those in flight)? */
	if (next_plan == NULL)
	{
		Oid			types[1] = {INT8ARRAYOID};

		next_plan = iotpipe_keep_plan("SELECT pg_catalog.min(n.next_attempt_at) FROM iotpipe.notifications n "
									  "  JOIN iotpipe.receivers v ON v.name = n.receiver AND v.enabled "
									  " WHERE n.state = 'pending' AND n.notification_id <> ALL ($1)",
									  1, types, 0);
	}
	args[0] = inflight_ids();
	ret = SPI_execute_plan(next_plan, args, NULL, false, 1);
	tx->next_due = 0;
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			tx->next_due = DatumGetTimestampTz(d);
	}
}

/* rows that can never go out: too old, or their receiver was deleted */
static void
housekeeping(TxState *tx)
{
	char	   *sql;
	int			ret;

	sql = psprintf("UPDATE iotpipe.notifications n SET state = 'failed', "
				   "       last_error = CASE WHEN NOT EXISTS (SELECT FROM iotpipe.receivers v "
				   "                                           WHERE v.name = n.receiver) "
				   "                         THEN 'receiver does not exist' "
				   "                         ELSE 'not delivered within iotpipe.notify_max_age' END "
				   " WHERE n.state = 'pending' AND n.notification_id <> ALL ($1) "
				   "   AND (n.created_at < pg_catalog.now() - pg_catalog.make_interval(secs => %d) "
				   "        OR NOT EXISTS (SELECT FROM iotpipe.receivers v WHERE v.name = n.receiver))",
				   iotpipe_notify_max_age_s);
	{
		Oid			types[1] = {INT8ARRAYOID};
		Datum		args[1];

		args[0] = inflight_ids();
		ret = SPI_execute_with_args(sql, 1, types, args, NULL, false, 0);
	}
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not expire notifications: %s", SPI_result_code_string(ret));
	tx->failed += SPI_processed;
	ret = SPI_execute("SELECT pg_catalog.count(*) FROM iotpipe.notifications WHERE state = 'pending'",
					  true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		tx->pending = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												  &isnull));
	}
}

static void
notifier_tx(void *arg)
{
	TxState    *tx = (TxState *) arg;

	tx->version_ok = iotpipe_version_ok(tx->detail, sizeof(tx->detail));
	if (!tx->version_ok)
		return;
	tx->recorded = noutcomes;
	if (noutcomes > 0)
		record_outcomes(tx);
	if (tx->housekeeping)
		housekeeping(tx);
	if (tx->claim)
		claim(tx);
}

/* ---------- driving curl ---------- */

static void
collect_finished(bool *freed)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		DeliveryJob *job = NULL;
		int			i;

		if (msg->msg != CURLMSG_DONE)
			continue;
		(void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &job);
		for (i = 0; i < ninflight; i++)
			if (&inflight[i]->job == job)
				break;
		if (i == ninflight)
			continue;
		{
			Inflight   *f = inflight[i];

			iotpipe_delivery_finish(&f->job, msg->data.result);
			add_outcome(f->job.notification_id, f->job.attempts + 1, &f->job, f->created_at);
			curl_multi_remove_handle(multi, f->job.easy);
			iotpipe_delivery_release(&f->job);
			MemoryContextDelete(f->cxt);
			pfree(f);
			inflight[i] = inflight[--ninflight];
			*freed = true;
		}
	}
}

static void
drive_sockets(void)
{
	struct epoll_event evs[MAX_EPOLL_EVENTS];
	int			n,
				i;

	n = epoll_wait(epfd, evs, MAX_EPOLL_EVENTS, 0);
	for (i = 0; i < n; i++)
	{
		int			flags = 0;

		if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			flags |= CURL_CSELECT_IN;
		if (evs[i].events & EPOLLOUT)
			flags |= CURL_CSELECT_OUT;
		if (evs[i].events & EPOLLERR)
			flags |= CURL_CSELECT_ERR;
		socket_action(evs[i].data.fd, flags);
	}
}

static void
drive_timer(void)
{
	if (curl_timer_at >= 0 && GetCurrentTimestamp() >= curl_timer_at)
	{
		curl_timer_at = -1;
		socket_action(CURL_SOCKET_TIMEOUT, 0);
	}
}

/* ---------- the worker ---------- */

static void
publish(int64 pending)
{
	char		detail[IOTPIPE_ERRLEN];

	snprintf(detail, sizeof(detail), "%d in flight, " INT64_FORMAT " pending", ninflight, pending);
	iotpipe_set_state(ninflight > 0 ? IOT_STATE_RUNNING : IOT_STATE_IDLE, detail);
}

void
iotpipe_notifier_main(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	bool		claim_wanted = true;
	TimestampTz next_claim_at = 0;
	TimestampTz next_housekeeping = 0;
	int64		pending = 0;

	iotpipe_worker_init(slotno, IOT_WORKER_NOTIFIER);
	pgstat_report_appname("iotpipe notifier");
	notifier_cxt = AllocSetContextCreate(TopMemoryContext, "iotpipe notifier", ALLOCSET_DEFAULT_SIZES);
	setup_curl();
	iotpipe_set_state(IOT_STATE_IDLE, "starting");

	while (!iotpipe_worker_should_stop())
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		want_claim = ninflight < iotpipe_notify_concurrency &&
			(claim_wanted || (next_claim_at != 0 && now >= next_claim_at));
		bool		want_record = noutcomes > 0 &&
			(ninflight == 0 || noutcomes >= OUTCOME_FLUSH_N || now - oldest_outcome >= OUTCOME_FLUSH_US);
		bool		want_house = now >= next_housekeeping;
		long		timeout;
		int			rc;
		bool		freed = false;

		if (want_claim || want_record || want_house)
		{
			TxState		tx = {0};
			MemoryContext old = MemoryContextSwitchTo(notifier_cxt);

			tx.claim = want_claim || want_house;
			tx.housekeeping = want_house;
			tx.pending = -1;
			if (iotpipe_worker_xact(notifier_tx, &tx, "delivering notifications", true))
			{
				if (!tx.version_ok)
				{
					iotpipe_set_state(IOT_STATE_WAITING, tx.detail);
					MemoryContextSwitchTo(old);
					break;
				}
				/* a request that could not start during the claim waits for the next */
				iotpipe_count(tx.recorded, tx.sent, tx.failed);
				forget_outcomes(tx.recorded);
				if (tx.claim)
				{
					claim_wanted = false;
					/* a full claim: more is due; else sleep until the next row is */
					if (tx.claimed >= tx.asked)
						next_claim_at = now;
					else if (tx.next_due > now)
						next_claim_at = tx.next_due;
					else
						next_claim_at = 0;	/* blocked rows: a finish, the latch or housekeeping */
				}
				if (want_house)
				{
					next_housekeeping = now + HOUSEKEEPING_US;
					if (tx.pending >= 0)
						pending = tx.pending;
				}
			}
			else
			{
				/* logged and in last_error; outcomes kept, tried again shortly */
				next_claim_at = now + 1000 * 1000;
				next_housekeeping = now + HOUSEKEEPING_US;
			}
			MemoryContextSwitchTo(old);
			publish(pending);
			iotpipe_update_rate();
			drive_timer();
			/* a transfer may have finished in there: never wait for it */
			collect_finished(&freed);
			if (freed)
				claim_wanted = true;
		}

		now = GetCurrentTimestamp();
		timeout = HOUSEKEEPING_US / 1000;
		if (freed)
			timeout = 0;
		if (curl_timer_at >= 0)
			timeout = Min(timeout, Max(0, (curl_timer_at - now + 999) / 1000));
		if (next_claim_at != 0 && ninflight < iotpipe_notify_concurrency)
			timeout = Min(timeout, Max(0, (next_claim_at - now + 999) / 1000));
		if (noutcomes > 0)
			timeout = Min(timeout, Max(0, (oldest_outcome + OUTCOME_FLUSH_US - now + 999) / 1000));
		rc = iotpipe_worker_wait(timeout, epfd);
		if (rc & WL_LATCH_SET)
			claim_wanted = true;
		if (rc & WL_SOCKET_READABLE)
			drive_sockets();
		drive_timer();
		collect_finished(&freed);
		if (freed)
			claim_wanted = true;
	}

	/* what finished is recorded; what is in flight goes again with the same key */
	if (noutcomes > 0)
	{
		TxState		tx = {0};

		if (iotpipe_worker_xact(notifier_tx, &tx, "recording deliveries", true))
			iotpipe_count(tx.recorded, tx.sent, tx.failed);
	}
	iotpipe_set_state(IOT_STATE_STOPPED, "stopped");
	proc_exit(0);
}
