/*-------------------------------------------------------------------------
 *
 * alert_write.c
 *	  Writing the fires and resolves the evaluation decided, and telling
 *	  the world: iotpipe.alerts rows and NOTIFY iotpipe_alerts.
 *
 *	  iotpipe.alerts is authoritative: fires are an INSERT .. ON CONFLICT
 *	  DO NOTHING against the partial unique index (at most one firing
 *	  alert per rule and sensor; a concurrent fire by another backend is
 *	  adopted, not duplicated), resolves an UPDATE of rows still firing (a
 *	  resolve somebody else did already is dropped).  Both are queued per
 *	  batch (iotpipe_alert_queue, called back by alert_eval.c) and written
 *	  in rounds (iotpipe_alert_flush), then NOTIFY iotpipe_alerts is queued
 *	  for each, in order, in the ingest transaction, unless a silence
 *	  matches.  This backend's copy of the firing set (alert_cache.c) is
 *	  updated with what was written.
 *
 *	  The payload is built here for the engine and, through
 *	  iotpipe.alert_payload(), for the SQL that notifies (offline timers,
 *	  acknowledgements).  The queue lives from the start of a batch to its
 *	  flush; an abort of the (sub)transaction drops what is left of it.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alert_cache.h"
#include "alert_write.h"
#include "delivery_outbox.h"
#include "guc.h"
#include "shmem.h"
#include "spiutil.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define ALERTS_CHANNEL		"iotpipe_alerts"

/*
 * Fires and resolves are queued while a batch is evaluated and written
 * with an UPDATE and an INSERT per round (over unnest()ed arrays), then
 * notified in the order they happened.  A (rule, sensor) alternates fire and
 * resolve; its k-th queued event goes to a later round than the one before
 * (resolves run before fires in a round), so no statement sees a key twice
 * and a resolve of a fire queued earlier finds its alert_id.
 */
typedef struct AlertEvent
{
	bool		fire;
	bool		value_null;
	bool		reading_null;
	bool		silenced;
	bool		done;			/* written: notify */
	int32		rule_idx;
	int16		round;
	int32		fire_ref;		/* resolve of a queued fire: its event, else -1 */
	SensorState *se;
	RuleState  *st;
	double		value;
	double		reading;
	TimestampTz ts;
	int64		alert_id;		/* resolve: known; fire: assigned by the INSERT */
	TimestampTz started_at;
	bool		has_explain;	/* anomaly, drift: why (baseline, scale, score) */
	FeatExplain explain;
} AlertEvent;

static AlertEvent *events = NULL;	/* write queue of the batch */
static int	nevents = 0;
static int	events_cap = 0;
static bool callbacks_registered = false;

static SPIPlanPtr fire_plan = NULL;
static SPIPlanPtr adopt_plan = NULL;
static SPIPlanPtr resolve_plan = NULL;

/* ---------- the NOTIFY payload ---------- */

static void
json_key(StringInfo buf, const char *key, bool first)
{
	if (!first)
		appendStringInfoChar(buf, ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

static void
json_str(StringInfo buf, const char *key, const char *val)
{
	json_key(buf, key, false);
	if (val)
		escape_json(buf, val);
	else
		appendStringInfoString(buf, "null");
}

static void
json_num(StringInfo buf, const char *key, bool isnull, double val)
{
	json_key(buf, key, false);
	if (isnull || isnan(val) || isinf(val))
		appendStringInfoString(buf, "null");
	else
		appendStringInfoString(buf, float8out_internal(val));
}

static void
json_ts(StringInfo buf, const char *key, bool isnull, TimestampTz ts)
{
	char		tsbuf[MAXDATELEN + 1];
	int			tz = 0;			/* always UTC */

	json_key(buf, key, false);
	if (isnull)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	JsonEncodeDateTime(tsbuf, TimestampTzGetDatum(ts), TIMESTAMPTZOID, &tz);
	appendStringInfoChar(buf, '"');
	appendStringInfoString(buf, tsbuf);
	appendStringInfoChar(buf, '"');
}

typedef struct PayloadArgs
{
	int64		alert_id;
	int32		rule_id;
	const char *rule;
	const char *kind;
	const char *sensor_id;
	const char *location;
	const char *state;
	const char *severity;
	const char *metric;
	const char *op;
	bool		value_null;
	double		value;
	bool		reading_null;
	double		reading;
	bool		threshold_null;
	double		threshold;
	bool		ts_null;
	TimestampTz ts;
	bool		started_null;
	TimestampTz started_at;
	const FeatExplain *explain; /* anomaly, drift; NULL: no such keys */
} PayloadArgs;

/*
 * The payload is kept under IOTPIPE_PAYLOAD_MAX bytes, whatever the rule name
 * or the location (PostgreSQL refuses a NOTIFY payload of BLCKSZ -
 * NAMEDATALEN - 128 = 8000 bytes or more, and the refusal would fail the
 * whole ingest transaction).  A payload that would be longer is built again
 * with each string field cut, at a character boundary, to a budget of
 * escaped bytes, and gets "truncated": true.  The budgets add up to well
 * under the limit, escapes (\u00XX) included; the 1024 bytes left over
 * hold the keys, the numbers (baseline, scale and score of anomaly and
 * drift alerts among them: under 120 bytes) and the times.  docs/alerts.md.
 */
#define IOTPIPE_PAYLOAD_MAX		7000
#define TRUNC_RULE_BYTES		1024
#define TRUNC_LOCATION_BYTES	2048
#define TRUNC_SENSOR_BYTES		512
#define TRUNC_WORD_BYTES		64	/* kind, state, severity, metric, op */

StaticAssertDecl(IOTPIPE_PAYLOAD_MAX < BLCKSZ - NAMEDATALEN - 128,
				 "NOTIFY payload budget exceeds PostgreSQL's limit");
StaticAssertDecl(TRUNC_RULE_BYTES + TRUNC_LOCATION_BYTES + TRUNC_SENSOR_BYTES +
				 5 * TRUNC_WORD_BYTES + 1024 < IOTPIPE_PAYLOAD_MAX,
				 "truncated NOTIFY payload may exceed its budget");

/* a string field, its escaped text cut to maxbytes (quotes included); true if cut */
static bool
json_str_cut(StringInfo buf, const char *key, const char *val, int maxbytes)
{
	StringInfoData tmp;
	const char *p;
	int			used = 2;
	bool		cut = false;

	if (val == NULL || maxbytes <= 0)
	{
		json_str(buf, key, val);
		return false;
	}
	json_key(buf, key, false);
	initStringInfo(&tmp);
	escape_json(&tmp, val);
	if (tmp.len <= maxbytes)
	{
		appendBinaryStringInfo(buf, tmp.data, tmp.len);
		pfree(tmp.data);
		return false;
	}
	appendStringInfoChar(buf, '"');
	for (p = val; *p;)
	{
		char		ch[MAX_MULTIBYTE_CHAR_LEN + 1];
		int			l = pg_mblen(p);
		int			inner;

		l = Min(l, (int) strnlen(p, MAX_MULTIBYTE_CHAR_LEN));
		memcpy(ch, p, l);
		ch[l] = '\0';
		resetStringInfo(&tmp);
		escape_json(&tmp, ch);
		inner = tmp.len - 2;	/* without its quotes */
		if (used + inner > maxbytes)
		{
			cut = true;
			break;
		}
		appendBinaryStringInfo(buf, tmp.data + 1, inner);
		used += inner;
		p += l;
	}
	appendStringInfoChar(buf, '"');
	pfree(tmp.data);
	return cut;
}

/* cut = false: the whole strings; true: each within its budget */
static bool
build_payload_cut(StringInfo buf, const PayloadArgs *p, bool cut)
{
	bool		truncated = false;
	int			word = cut ? TRUNC_WORD_BYTES : 0;

	appendStringInfo(buf, "{\"alert_id\":" INT64_FORMAT, p->alert_id);
	appendStringInfo(buf, ",\"rule_id\":%d", p->rule_id);
	truncated |= json_str_cut(buf, "rule", p->rule, cut ? TRUNC_RULE_BYTES : 0);
	truncated |= json_str_cut(buf, "kind", p->kind, word);
	truncated |= json_str_cut(buf, "sensor_id", p->sensor_id, cut ? TRUNC_SENSOR_BYTES : 0);
	truncated |= json_str_cut(buf, "location", p->location, cut ? TRUNC_LOCATION_BYTES : 0);
	truncated |= json_str_cut(buf, "state", p->state, word);
	truncated |= json_str_cut(buf, "severity", p->severity, word);
	truncated |= json_str_cut(buf, "metric", p->metric, word);
	truncated |= json_str_cut(buf, "op", p->op, word);
	json_num(buf, "value", p->value_null, p->value);
	json_num(buf, "reading", p->reading_null, p->reading);
	json_num(buf, "threshold", p->threshold_null, p->threshold);
	json_ts(buf, "ts", p->ts_null, p->ts);
	json_ts(buf, "started_at", p->started_null, p->started_at);
	if (p->explain)
	{
		/* three numbers: within the 1024 bytes the budgets leave over */
		json_num(buf, "baseline", false, p->explain->baseline);
		json_num(buf, "scale", false, p->explain->scale);
		json_num(buf, "score", false, p->explain->score);
	}
	if (truncated)
		appendStringInfoString(buf, ",\"truncated\":true");
	appendStringInfoChar(buf, '}');
	return truncated;
}

static void
build_payload_whole(StringInfo buf, const PayloadArgs *p)
{
	build_payload_cut(buf, p, false);
	if (buf->len < IOTPIPE_PAYLOAD_MAX)
		return;
	resetStringInfo(buf);
	build_payload_cut(buf, p, true);
}

static void
build_payload(StringInfo buf, const PayloadArgs *p)
{
	if (iotpipe_notify_ids_only)
	{
		/* confidential sites: listeners read the rest from iotpipe.alerts */
		appendStringInfo(buf, "{\"alert_id\":" INT64_FORMAT ",\"rule_id\":%d}",
						 p->alert_id, p->rule_id);
		return;
	}
	build_payload_cut(buf, p, false);
	if (buf->len < IOTPIPE_PAYLOAD_MAX)
		return;
	resetStringInfo(buf);
	build_payload_cut(buf, p, true);
	Assert(buf->len < IOTPIPE_PAYLOAD_MAX);
}

/* ---------- the NOTIFY queue ---------- */

/*
 * A listener that stays idle in a transaction holds the queue's tail: the
 * queue fills up (8 GB on PostgreSQL 15), and then every transaction that
 * notifies fails at commit ("too many notifications in the NOTIFY queue"),
 * the readings with it.  So before notifying, the fill fraction
 * (pg_notification_queue_usage(), cheap: a shared lock) is compared with
 * iotpipe.notify_queue_limit: at or above it the notifications are skipped,
 * the alerts are still written (iotpipe.alerts is authoritative), and the
 * skipped ones are counted, at commit, in iotpipe.status.notifies_skipped.
 * 0 skips every notification (what the tests use to simulate a full queue).
 */
static uint64 skipped_pending = 0;

static bool
notify_queue_has_room(void)
{
	LOCAL_FCINFO(fcinfo, 0);
	double		usage;

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	usage = DatumGetFloat8(pg_notification_queue_usage(fcinfo));
	return usage < iotpipe_notify_queue_limit;
}

static void
count_skipped_at_commit(void)
{
	IotWorkerSlot *slot;

	if (skipped_pending == 0 || iotpipe_shared == NULL)
	{
		skipped_pending = 0;
		return;
	}
	/* a worker counts its own; other sessions count on the launcher's row */
	slot = iotpipe_slot(iotpipe_my_slot >= 0 ? iotpipe_my_slot : IOT_SLOT_LAUNCHER);
	if (slot)
		pg_atomic_fetch_add_u64(&slot->notifies_skipped, skipped_pending);
	skipped_pending = 0;
}

static void
register_callbacks(void);

/* the SQL paths (offline timers, rule updates): notify unless the queue is full */
PG_FUNCTION_INFO_V1(iotpipe_alert_notify);
Datum
iotpipe_alert_notify(PG_FUNCTION_ARGS)
{
	char	   *payload;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	register_callbacks();
	if (!notify_queue_has_room())
	{
		skipped_pending++;
		PG_RETURN_BOOL(false);
	}
	payload = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Async_Notify(ALERTS_CHANNEL, payload);
	PG_RETURN_BOOL(true);
}

#define ARG_TEXT(n) (PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n)))

static Datum
payload_from_args(FunctionCallInfo fcinfo, bool whole)
{
	PayloadArgs p;
	StringInfoData buf;

	p.alert_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	p.rule_id = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	p.rule = ARG_TEXT(2);
	p.kind = ARG_TEXT(3);
	p.sensor_id = ARG_TEXT(4);
	p.location = ARG_TEXT(5);
	p.state = ARG_TEXT(6);
	p.severity = ARG_TEXT(7);
	p.metric = ARG_TEXT(8);
	p.op = ARG_TEXT(9);
	p.value_null = PG_ARGISNULL(10);
	p.value = p.value_null ? 0 : PG_GETARG_FLOAT8(10);
	p.reading_null = PG_ARGISNULL(11);
	p.reading = p.reading_null ? 0 : PG_GETARG_FLOAT8(11);
	p.threshold_null = PG_ARGISNULL(12);
	p.threshold = p.threshold_null ? 0 : PG_GETARG_FLOAT8(12);
	p.ts_null = PG_ARGISNULL(13);
	p.ts = p.ts_null ? 0 : PG_GETARG_TIMESTAMPTZ(13);
	p.started_null = PG_ARGISNULL(14);
	p.started_at = p.started_null ? 0 : PG_GETARG_TIMESTAMPTZ(14);
	p.explain = NULL;
	initStringInfo(&buf);
	if (whole)
		build_payload_whole(&buf, &p);
	else
		build_payload(&buf, &p);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}

/*
 * The payload receivers get (iotpipe._delivery_payload, the outbox): whole,
 * also with iotpipe.notify_ids_only, which limits what LISTEN reveals;
 * receivers are configured by iotpipe_admin.
 */
PG_FUNCTION_INFO_V1(iotpipe_alert_payload);
Datum
iotpipe_alert_payload(PG_FUNCTION_ARGS)
{
	return payload_from_args(fcinfo, false);
}

PG_FUNCTION_INFO_V1(iotpipe_delivery_payload);
Datum
iotpipe_delivery_payload(PG_FUNCTION_ARGS)
{
	return payload_from_args(fcinfo, true);
}

static void
payload_args(PayloadArgs *pa, const AlertRule *r, const SensorState *se, int64 alert_id,
			 const char *state, bool value_null, double value, bool reading_null,
			 double reading, TimestampTz ts, TimestampTz started_at,
			 const FeatExplain *explain)
{
#define p (*pa)
	p.alert_id = alert_id;
	p.rule_id = r->rule_id;
	p.rule = r->name;
	p.kind = iotpipe_alert_kind_names[r->kind];
	p.sensor_id = se->sensor_id;
	p.location = se->location;
	p.state = state;
	p.severity = r->severity;
	p.metric = iotpipe_alert_metric_names[r->metric];
	p.op = r->op;
	p.value_null = value_null;
	p.value = value;
	p.reading_null = reading_null;
	p.reading = reading;
	p.threshold_null = false;
	p.threshold = r->threshold;
	p.ts_null = false;
	p.ts = ts;
	p.started_null = false;
	p.started_at = started_at;
	p.explain = explain;
#undef p
}

static void
notify(const AlertRule *r, const SensorState *se, int64 alert_id, const char *state,
	   bool value_null, double value, bool reading_null, double reading,
	   TimestampTz ts, TimestampTz started_at, const FeatExplain *explain)
{
	PayloadArgs p;
	StringInfoData buf;

	payload_args(&p, r, se, alert_id, state, value_null, value, reading_null, reading, ts,
				 started_at, explain);
	initStringInfo(&buf);
	build_payload(&buf, &p);
	Async_Notify(ALERTS_CHANNEL, buf.data);
	pfree(buf.data);
}

/*
 * The batch's notified fires and resolves into the delivery outbox
 * (delivery_outbox.c), in order, in this transaction: only when a route
 * exists, so a site without receivers pays one cached check per batch.
 * A full NOTIFY queue does not stop delivery.
 */
static void
enqueue_deliveries(void)
{
	const AlertRule *rules = iotpipe_alert_rules.rules;
	int			n = 0,
				i;
	Datum	   *aids,
			   *evs,
			   *rls,
			   *sevs,
			   *locs,
			   *sids,
			   *pls;
	bool	   *locnulls;

	for (i = 0; i < nevents; i++)
		if (events[i].done && !events[i].silenced)
			n++;
	if (n == 0 || !iotpipe_outbox_routes_exist())
		return;
	aids = palloc(sizeof(Datum) * n);
	evs = palloc(sizeof(Datum) * n);
	rls = palloc(sizeof(Datum) * n);
	sevs = palloc(sizeof(Datum) * n);
	locs = palloc(sizeof(Datum) * n);
	sids = palloc(sizeof(Datum) * n);
	pls = palloc(sizeof(Datum) * n);
	locnulls = palloc(sizeof(bool) * n);
	n = 0;
	for (i = 0; i < nevents; i++)
	{
		AlertEvent *ev = &events[i];
		const AlertRule *r = &rules[ev->rule_idx];
		PayloadArgs p;
		StringInfoData buf;

		if (!ev->done || ev->silenced)
			continue;
		payload_args(&p, r, ev->se, ev->alert_id, ev->fire ? "firing" : "resolved",
					 ev->value_null, ev->value, ev->reading_null || r->kind == RK_OFFLINE,
					 ev->reading, ev->ts, ev->started_at,
					 ev->has_explain ? &ev->explain : NULL);
		initStringInfo(&buf);
		build_payload_whole(&buf, &p);
		aids[n] = Int64GetDatum(ev->alert_id);
		evs[n] = CStringGetTextDatum(ev->fire ? "firing" : "resolved");
		rls[n] = CStringGetTextDatum(r->name);
		sevs[n] = CStringGetTextDatum(r->severity);
		locnulls[n] = (ev->se->location == NULL);
		locs[n] = locnulls[n] ? (Datum) 0 : CStringGetTextDatum(ev->se->location);
		sids[n] = CStringGetTextDatum(ev->se->sensor_id);
		pls[n] = CStringGetTextDatum(buf.data);
		n++;
	}
	iotpipe_outbox_enqueue(n, aids, evs, rls, sevs, locs, locnulls, sids, pls);
}

/* ---------- transaction bookkeeping ---------- */

/* the readings the queued events came from are gone: so are the events */
static void
write_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		nevents = 0;
		skipped_pending = 0;
	}
	else if (event == XACT_EVENT_COMMIT)
		count_skipped_at_commit();
}

static void
write_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		nevents = 0;
}

static void
register_callbacks(void)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(write_xact_callback, NULL);
		RegisterSubXactCallback(write_subxact_callback, NULL);
		callbacks_registered = true;
	}
}

void
iotpipe_alert_write_begin(void)
{
	register_callbacks();
	nevents = 0;
}

/* ---------- the queue ---------- */

static void
queue_event(const AlertRule *r, SensorState *se, RuleState *st, bool fire, bool value_null,
			double value, bool reading_null, double reading, TimestampTz ts, int64 alert_id,
			const FeatExplain *explain)
{
	AlertEvent *ev;
	int			round = 0;
	int			fire_ref = -1;

	if (st->queued)
	{
		AlertEvent *last = &events[st->qlast];

		if (last->round >= 1000)
		{
			iotpipe_alert_flush();	/* a very long chain: write what we have */
			return queue_event(r, se, st, fire, value_null, value, reading_null, reading, ts,
							   alert_id, explain);
		}
		if (fire)
			round = last->round;	/* after the resolve, in the same round */
		else
		{
			round = last->round + 1;	/* after the fire */
			fire_ref = st->qlast;
		}
	}
	if (nevents == events_cap)
	{
		events_cap = Max(64, events_cap * 2);
		events = events ? repalloc(events, sizeof(AlertEvent) * events_cap)
			: MemoryContextAlloc(TopMemoryContext, sizeof(AlertEvent) * events_cap);
	}
	ev = &events[nevents++];
	memset(ev, 0, sizeof(*ev));
	ev->fire = fire;
	ev->rule_idx = r - iotpipe_alert_rules.rules;
	ev->se = se;
	ev->st = st;
	ev->value_null = value_null;
	ev->value = value;
	ev->reading_null = reading_null;
	ev->reading = reading;
	ev->ts = ts;
	ev->alert_id = alert_id;
	ev->round = round;
	ev->fire_ref = fire_ref;
	ev->silenced = iotpipe_alert_silenced(r, se->sensor_id, se->location);
	if (explain)
	{
		ev->has_explain = true;
		ev->explain = *explain;
	}
	st->queued = true;
	st->qlast = nevents - 1;
}

void
iotpipe_alert_queue(const AlertRule *r, SensorState *se, RuleState *st, bool fire,
					bool value_null, double value, bool reading_null, double reading,
					TimestampTz ts, const FeatExplain *explain)
{
	int64		alert_id = 0;

	if (!fire && !st->queued)
	{
		/* the alert_id of a fire still queued is known at the flush */
		FiringEntry *fe = iotpipe_alert_firing(r->rule_id, se->sensor_id, HASH_FIND);

		if (fe == NULL)
		{
			/* cannot happen: firing states mirror the firing set */
			iotpipe_alert_cache_firing_stale();
			return;
		}
		alert_id = fe->alert_id;
	}
	queue_event(r, se, st, fire, value_null, value, reading_null, reading, ts, alert_id,
				explain);
}

/* ---------- writing ---------- */

/*
 * Resolves, one UPDATE for the batch.  It finds the rows by primary key
 * (= ANY): "state <> 'resolved'" rather than "state = 'firing'" keeps the
 * planner off the partial index of firing alerts, which it would scan whole.
 */
static void
write_resolves(int round)
{
	int			n = 0,
				i;
	Datum	   *aids = palloc(sizeof(Datum) * nevents);
	Datum	   *tss = palloc(sizeof(Datum) * nevents);
	Datum	   *vals = palloc(sizeof(Datum) * nevents);
	bool	   *vnulls = palloc(sizeof(bool) * nevents);
	Datum		args[3];
	int			ret;
	uint64		k;

	for (i = 0; i < nevents; i++)
	{
		AlertEvent *ev = &events[i];

		if (ev->fire || ev->round != round)
			continue;
		if (ev->fire_ref >= 0)
			ev->alert_id = events[ev->fire_ref].alert_id;	/* 0: not written */
		if (ev->alert_id == 0)
			continue;			/* its fire was not written: nothing to resolve */
		aids[n] = Int64GetDatum(ev->alert_id);
		tss[n] = TimestampTzGetDatum(ev->ts);
		vals[n] = Float8GetDatum(ev->value);
		vnulls[n] = ev->value_null;
		n++;
	}
	if (n == 0)
		return;
	if (resolve_plan == NULL)
	{
		Oid			types[3] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID, FLOAT8ARRAYOID};

		/*
		 * Planned for each call: a generic plan made while iotpipe.alerts was
		 * small (and never analyzed) scans the whole table, and the table
		 * only grows.  With the ids at hand the planner reads them through
		 * the primary key.
		 */
		resolve_plan = iotpipe_keep_plan("UPDATE iotpipe.alerts AS a "
										 "   SET state = 'resolved', resolved_at = u.ts, "
										 "       resolved_value = u.v, resolved_wall = pg_catalog.now() "
										 "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(id, ts, v) "
										 " WHERE a.alert_id = ANY ($1) AND a.alert_id = u.id "
										 "   AND a.state <> 'resolved' "
										 "RETURNING a.alert_id, a.started_at",
										 3, types, CURSOR_OPT_CUSTOM_PLAN);
	}
	args[0] = iotpipe_byval_array(aids, NULL, n, INT8OID);
	args[1] = iotpipe_byval_array(tss, NULL, n, TIMESTAMPTZOID);
	args[2] = iotpipe_float8_array(vals, vnulls, n);
	iotpipe_alert_cache_writing(true);
	ret = SPI_execute_plan(resolve_plan, args, NULL, false, 0);
	iotpipe_alert_cache_writing(false);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not update iotpipe.alerts: %s", SPI_result_code_string(ret));
	for (k = 0; k < SPI_processed; k++)
	{
		bool		isnull;
		int64		aid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k],
													  SPI_tuptable->tupdesc, 1, &isnull));
		TimestampTz started = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[k],
																SPI_tuptable->tupdesc, 2,
																&isnull));

		for (i = 0; i < nevents; i++)
			if (!events[i].fire && events[i].round == round && events[i].alert_id == aid)
			{
				events[i].done = true;
				events[i].started_at = started;
				break;
			}
	}
	/* those not updated were resolved by somebody else already: say nothing */
	if (SPI_processed > 0)
		iotpipe_alert_cache_wrote();
	SPI_freetuptable(SPI_tuptable);
}

static void
write_fires(int round)
{
	const AlertRule *rules = iotpipe_alert_rules.rules;
	int			n = 0,
				i;
	Datum	   *rids = palloc(sizeof(Datum) * nevents);
	Datum	   *sids = palloc(sizeof(Datum) * nevents);
	Datum	   *locs = palloc(sizeof(Datum) * nevents);
	bool	   *locnulls = palloc(sizeof(bool) * nevents);
	Datum	   *sevs = palloc(sizeof(Datum) * nevents);
	Datum	   *metrics = palloc(sizeof(Datum) * nevents);
	bool	   *mnulls = palloc(sizeof(bool) * nevents);
	Datum	   *vals = palloc(sizeof(Datum) * nevents);
	Datum	   *reads = palloc(sizeof(Datum) * nevents);
	Datum	   *ths = palloc(sizeof(Datum) * nevents);
	Datum	   *tss = palloc(sizeof(Datum) * nevents);
	Datum	   *sils = palloc(sizeof(Datum) * nevents);
	Datum	   *exs[3];
	bool	   *exnulls = palloc(sizeof(bool) * nevents);
	Datum		args[13];
	int			ret;
	uint64		k;

	for (i = 0; i < 3; i++)
		exs[i] = palloc(sizeof(Datum) * nevents);
	for (i = 0; i < nevents; i++)
	{
		AlertEvent *ev = &events[i];
		const AlertRule *r = &rules[ev->rule_idx];

		if (!ev->fire || ev->round != round)
			continue;
		exnulls[n] = !ev->has_explain;
		exs[0][n] = Float8GetDatum(ev->explain.baseline);
		exs[1][n] = Float8GetDatum(ev->explain.scale);
		exs[2][n] = Float8GetDatum(ev->explain.score);
		rids[n] = Int32GetDatum(r->rule_id);
		sids[n] = CStringGetTextDatum(ev->se->sensor_id);
		locnulls[n] = (ev->se->location == NULL);
		locs[n] = locnulls[n] ? (Datum) 0 : CStringGetTextDatum(ev->se->location);
		sevs[n] = CStringGetTextDatum(r->severity);
		mnulls[n] = (r->metric == RM_NONE);
		metrics[n] = mnulls[n] ? (Datum) 0 :
			CStringGetTextDatum(iotpipe_alert_metric_names[r->metric]);
		vals[n] = Float8GetDatum(ev->value);
		reads[n] = Float8GetDatum(ev->reading);
		ths[n] = Float8GetDatum(r->threshold);
		tss[n] = TimestampTzGetDatum(ev->ts);
		sils[n] = BoolGetDatum(ev->silenced);
		n++;
	}
	if (n == 0)
		return;
	if (fire_plan == NULL)
	{
		Oid			types[13] = {INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID,
			TIMESTAMPTZARRAYOID, BOOLARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID,
		FLOAT8ARRAYOID};

		fire_plan = iotpipe_keep_plan("INSERT INTO iotpipe.alerts AS a "
									  "  (rule_id, sensor_id, location, severity, state, metric, value, "
									  "   reading, threshold, started_at, silenced, baseline, scale, score) "
									  "SELECT u.r, u.s, u.l, u.sev, 'firing', u.m, u.v, u.rd, u.th, u.ts, u.sil, "
									  "       u.b, u.sc, u.z "
									  "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
									  "pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
									  "pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), "
									  "pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), "
									  "pg_catalog.unnest($13)) "
									  "       AS u(r, s, l, sev, m, v, rd, th, ts, sil, b, sc, z) "
									  "ON CONFLICT (rule_id, sensor_id) WHERE state = 'firing' DO NOTHING "
									  "RETURNING a.rule_id, a.sensor_id, a.alert_id",
									  13, types, 0);
	}
	args[0] = iotpipe_byval_array(rids, NULL, n, INT4OID);
	args[1] = iotpipe_text_array(sids, NULL, n);
	args[2] = iotpipe_text_array(locs, locnulls, n);
	args[3] = iotpipe_text_array(sevs, NULL, n);
	args[4] = iotpipe_text_array(metrics, mnulls, n);
	args[5] = iotpipe_float8_array(vals, NULL, n);
	args[6] = iotpipe_float8_array(reads, NULL, n);
	args[7] = iotpipe_float8_array(ths, NULL, n);
	args[8] = iotpipe_byval_array(tss, NULL, n, TIMESTAMPTZOID);
	args[9] = iotpipe_byval_array(sils, NULL, n, BOOLOID);
	for (i = 0; i < 3; i++)
		args[10 + i] = iotpipe_float8_array(exs[i], exnulls, n);
	iotpipe_alert_cache_writing(true);
	ret = SPI_execute_plan(fire_plan, args, NULL, false, 0);
	iotpipe_alert_cache_writing(false);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into iotpipe.alerts: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
		iotpipe_alert_cache_wrote();
	for (k = 0; k < SPI_processed; k++)
	{
		bool		isnull;
		int32		rid = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[k],
													  SPI_tuptable->tupdesc, 1, &isnull));
		char	   *sid = SPI_getvalue(SPI_tuptable->vals[k], SPI_tuptable->tupdesc, 2);
		int64		aid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k],
													  SPI_tuptable->tupdesc, 3, &isnull));

		for (i = 0; i < nevents; i++)
		{
			AlertEvent *ev = &events[i];

			if (ev->fire && ev->round == round && !ev->done &&
				rules[ev->rule_idx].rule_id == rid &&
				strcmp(ev->se->sensor_id, sid) == 0)
			{
				ev->done = true;
				ev->alert_id = aid;
				ev->started_at = ev->ts;
				break;
			}
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/* a fire that met a firing alert of another backend: adopt it, notify nothing */
static void
adopt(AlertEvent *ev)
{
	const AlertRule *r = &iotpipe_alert_rules.rules[ev->rule_idx];
	Datum		args[2];
	int			ret;

	if (adopt_plan == NULL)
	{
		Oid			types[2] = {INT4OID, TEXTOID};

		adopt_plan = iotpipe_keep_plan("SELECT alert_id, started_at FROM iotpipe.alerts "
									   " WHERE rule_id = $1 AND sensor_id = $2 AND state = 'firing'",
									   2, types, 0);
	}
	args[0] = Int32GetDatum(r->rule_id);
	args[1] = CStringGetTextDatum(ev->se->sensor_id);
	ret = SPI_execute_plan(adopt_plan, args, NULL, false, 1);
	ev->alert_id = 0;
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		ev->alert_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1, &isnull));
		ev->started_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 2, &isnull));
	}
	/* else resolved again meanwhile: resync the firing states next batch */
	iotpipe_alert_cache_firing_stale();
	SPI_freetuptable(SPI_tuptable);
}

void
iotpipe_alert_flush(void)
{
	const AlertRule *rules = iotpipe_alert_rules.rules;
	int			i,
				round,
				maxround = 0;
	bool		room = true;

	if (nevents == 0)
		return;
	for (i = 0; i < nevents; i++)
		maxround = Max(maxround, events[i].round);
	for (round = 0; round <= maxround; round++)
	{
		write_resolves(round);
		write_fires(round);
		for (i = 0; i < nevents; i++)
			if (events[i].fire && events[i].round == round && !events[i].done)
				adopt(&events[i]);
	}
	for (i = 0; i < nevents; i++)
		if (events[i].done && !events[i].silenced)
		{
			/* once per batch */
			room = notify_queue_has_room();
			break;
		}
	enqueue_deliveries();
	for (i = 0; i < nevents; i++)
	{
		AlertEvent *ev = &events[i];
		const AlertRule *r = &rules[ev->rule_idx];

		ev->st->queued = false;
		if (ev->fire)
		{
			if (ev->alert_id != 0)
			{
				FiringEntry *fe = iotpipe_alert_firing(r->rule_id, ev->se->sensor_id,
													   HASH_ENTER);

				fe->alert_id = ev->alert_id;
				fe->started_at = ev->started_at;
			}
		}
		else
			iotpipe_alert_firing(r->rule_id, ev->se->sensor_id, HASH_REMOVE);
		if (ev->done && !ev->silenced && !room)
			skipped_pending++;
		else if (ev->done && !ev->silenced)
			notify(r, ev->se, ev->alert_id, ev->fire ? "firing" : "resolved",
				   ev->value_null, ev->value, ev->reading_null || r->kind == RK_OFFLINE,
				   ev->reading, ev->ts, ev->started_at, ev->has_explain ? &ev->explain : NULL);
	}
	nevents = 0;
}
