/*-------------------------------------------------------------------------
 *
 * alerts.c
 *	  The alert engine: rules evaluated in C on every accepted reading,
 *	  inside the ingest transaction (iotpipe_alerts_process_batch), plus
 *	  the timers the launcher runs (iotpipe_alerts_tick: offline sensors,
 *	  silences that ended).
 *
 *	  Each backend that ingests keeps, in backend-local memory:
 *	    - the enabled rules and the silences (reloaded when the shared
 *	      counter IotShared->rules_version moved: triggers on alert_rules
 *	      and silences bump it when their transaction commits);
 *	    - per sensor: its last known location, the newest event time per
 *	      metric, the features its rules compare (value, smoothed rate,
 *	      EWMA anomaly score: each computed once per reading), and per rule
 *	      in scope a small RuleState (pending breach streak, firing) plus
 *	      an "active" bit, so idle rules cost one compare each;
 *	    - its copy of the firing alerts (rule_id, sensor_id) -> alert_id,
 *	      reloaded when the counter AlertShared->alerts_version moved
 *	      (bumped at commit by whoever changed iotpipe.alerts: the engine
 *	      of another backend, the launcher's offline check, a user).
 *
 *	  SQL is only touched to write fires and resolves, and to reload.
 *	  iotpipe.alerts is authoritative: fires are an INSERT .. ON CONFLICT
 *	  DO NOTHING against the partial unique index (at most one firing
 *	  alert per rule and sensor; a concurrent fire by another backend is
 *	  adopted, not duplicated), resolves an UPDATE of rows still firing (a
 *	  resolve somebody else did already is dropped).  Both are queued per
 *	  batch and written in rounds, then NOTIFY iotpipe_alerts is queued for
 *	  each, in order, in the ingest transaction, unless a silence matches.
 *
 *	  On abort of a transaction (or subtransaction) in which the engine
 *	  ran, all backend-local state is dropped and rebuilt from the tables:
 *	  the readings it was derived from are gone too.  Pending streaks,
 *	  rate and anomaly statistics are not persisted: after a restart they
 *	  start afresh (firing alerts are reloaded from the table).
 *
 *	  Readings older than (or as old as) the newest one seen for a sensor
 *	  and metric are stored by the ingest core but ignored here, so late
 *	  data never flips an alert backwards.  Reference: docs/alerts.md.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "shmem.h"
#include "alerts.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/float.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define ALERTS_CHANNEL		"iotpipe_alerts"
#define SENSOR_KEYLEN		(IOTPIPE_MAX_SENSOR_ID * 4 + 1)
#define ANOMALY_MIN_STDDEV	0.001

typedef enum RuleKind
{
	RK_THRESHOLD,
	RK_RATE,
	RK_OFFLINE,
	RK_ANOMALY
} RuleKind;

static const char *const kind_names[] = {"threshold", "rate", "offline", "anomaly"};

typedef enum RuleMetric
{
	RM_NONE,
	RM_TEMPERATURE,
	RM_HUMIDITY
} RuleMetric;

static const char *const metric_names[] = {NULL, "temperature", "humidity"};

typedef struct AlertRule
{
	int32		rule_id;
	RuleKind	kind;
	RuleMetric	metric;
	char	   *name;
	char	   *sensor_id;		/* scope, NULL = any */
	char	   *location;		/* scope, NULL = any */
	bool		gt;				/* op '>' (anomaly: always) */
	char	   *op;				/* as in the table, NULL for offline/anomaly */
	double		threshold;
	double		clear;			/* clear_threshold, defaulting to threshold */
	int64		for_us;
	char	   *severity;
	int			min_samples;
	double		alpha;			/* anomaly: 2 / (window_size + 1) */
	double		rate_tau_us;	/* rate: smoothing time constant, 0 = raw */
	uint32		sig;			/* what state depends on: kind, metric, window */
	int			feature;		/* index into features[] (not offline) */
} AlertRule;

/*
 * What rules compare with their threshold, computed once per sensor and
 * reading however many rules share it: the value itself, a smoothed rate
 * (per metric and time constant), an anomaly score (per metric, window and
 * warm-up).
 */
typedef enum FeatKind
{
	FK_VALUE,
	FK_RATE,
	FK_ANOMALY
} FeatKind;

typedef struct Feature
{
	FeatKind	kind;
	RuleMetric	metric;
	double		param;			/* rate: tau (us); anomaly: alpha */
	int			min_samples;	/* anomaly */
} Feature;

/* per (feature, sensor) */
typedef struct FeatState
{
	Feature		def;			/* to keep the state across rule reloads */
	bool		has_prev;
	int32		n;
	TimestampTz prev_ts;
	double		prev_value;
	double		mean;			/* anomaly: EWMA of the value; rate: smoothed rate */
	double		var;			/* anomaly: EWM variance */
} FeatState;

typedef struct Silence
{
	int32		rule_id;		/* 0 = any */
	char	   *sensor_id;
	char	   *location;
	TimestampTz starts_at;
	TimestampTz ends_at;
} Silence;

/* per (rule, sensor) evaluation state: small, the loop over rules is hot */
typedef struct RuleState
{
	TimestampTz pending_since;	/* start of the breach streak; DT_NOBEGIN = none */
	int32		rule_id;
	int16		rule_idx;		/* into rules[] of the current generation */
	bool		firing;
	bool		queued;			/* has events in the write queue */
	uint8		sig;			/* low bits of the rule's sig */
	int32		qlast;			/* its last queued event */
} RuleState;

typedef struct SensorState
{
	char		sensor_id[SENSOR_KEYLEN];	/* hash key */
	char	   *location;		/* last known, engine context */
	uint64		rules_gen;		/* rules generation the states were built for */
	uint64		firing_gen;		/* firing-set generation they were synced with */
	TimestampTz last_ts[3];		/* per metric: newest reading evaluated */
	int			nstates;
	RuleState  *states;			/* the rules in scope, in rules[] order */
	int16	   *ridx;			/* their rules[] index: the hot loop reads only this */
	uint64	   *active;			/* bit per state: firing, pending or queued */
	int			nfeats;
	FeatState  *feats;
} SensorState;

typedef struct FiringKey
{
	int32		rule_id;
	char		sensor_id[SENSOR_KEYLEN];
} FiringKey;

typedef struct FiringEntry
{
	FiringKey	key;
	int64		alert_id;
	TimestampTz started_at;
} FiringEntry;

/* shared memory of the engine: the firing-alerts change counter */
typedef struct AlertShared
{
	pg_atomic_uint64 alerts_version;
} AlertShared;

static AlertShared *alert_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* backend-local engine state */
static MemoryContext engine_cxt = NULL;
static MemoryContext rules_cxt = NULL;
static AlertRule *rules = NULL;
static int	nrules = 0;
static Feature *features = NULL;
static int	nfeatures = 0;
static double *feat_value = NULL;	/* per batch reading scratch */
static bool *feat_ok = NULL;
static Silence *silences = NULL;
static int	nsilences = 0;
static HTAB *sensor_htab = NULL;
static HTAB *firing_htab = NULL;
static uint64 my_rules_version = 0;	/* 0 = never loaded */
static uint64 my_alerts_version = 0;
static uint64 rules_gen = 1;
static uint64 firing_gen = 1;
static bool rules_loaded = false;
static bool firing_loaded = false;

/* per-transaction flags */
static bool callbacks_registered = false;
static bool rules_bump_pending = false;		/* bump rules_version at commit */
static bool alerts_bump_pending = false;	/* bump alerts_version at commit */
static bool rules_local_dirty = false;	/* reload rules at the next batch */
static bool alerts_local_dirty = false; /* reload firing alerts at next batch */
static bool engine_ran = false;		/* engine state changed in this xact */
static bool engine_writing = false; /* the alerts trigger fires for our write */

typedef struct AlertEvent AlertEvent;
static AlertEvent *events = NULL;	/* write queue of the batch */
static int	nevents = 0;
static int	events_cap = 0;

static SPIPlanPtr fire_plan = NULL;
static SPIPlanPtr adopt_plan = NULL;
static SPIPlanPtr resolve_plan = NULL;

static void alerts_xact_callback(XactEvent event, void *arg);
static void flush_events(void);
static void alerts_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									SubTransactionId parentSubid, void *arg);

/* ---------- shared memory ---------- */

static void
alerts_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(AlertShared)));
}

static void
alerts_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	alert_shared = ShmemInitStruct("iotpipe alerts", sizeof(AlertShared), &found);
	if (!found)
		pg_atomic_init_u64(&alert_shared->alerts_version, 1);
	LWLockRelease(AddinShmemInitLock);
}

void
iotpipe_alerts_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = alerts_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = alerts_shmem_startup;
}

/* ---------- transaction bookkeeping ---------- */

static void
ensure_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(alerts_xact_callback, NULL);
	RegisterSubXactCallback(alerts_subxact_callback, NULL);
	callbacks_registered = true;
}

/* forget everything derived from the tables; it is rebuilt lazily */
static void
reset_engine(void)
{
	if (engine_cxt != NULL)
		MemoryContextDelete(engine_cxt);
	engine_cxt = NULL;
	rules_cxt = NULL;
	rules = NULL;
	nrules = 0;
	features = NULL;
	nfeatures = 0;
	silences = NULL;
	nsilences = 0;
	sensor_htab = NULL;
	firing_htab = NULL;
	my_rules_version = my_alerts_version = 0;
	rules_loaded = firing_loaded = false;
	nevents = 0;
	rules_gen++;
	firing_gen++;
}

static void
alerts_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* runs after the commit is visible to others: bump now */
			if (rules_bump_pending && iotpipe_shared != NULL)
				pg_atomic_fetch_add_u64(&iotpipe_shared->rules_version, 1);
			if (alerts_bump_pending && alert_shared != NULL)
			{
				uint64		old = pg_atomic_fetch_add_u64(&alert_shared->alerts_version, 1);

				/* nobody else changed alerts since we synced: we are current */
				if (old == my_alerts_version && !alerts_local_dirty && firing_loaded)
					my_alerts_version = old + 1;
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (engine_ran || rules_local_dirty || alerts_local_dirty ||
				rules_bump_pending || alerts_bump_pending)
				reset_engine();
			rules_local_dirty = alerts_local_dirty = false;
			break;
		default:
			return;
	}
	rules_bump_pending = alerts_bump_pending = false;
	engine_ran = false;
	engine_writing = false;
}

static void
alerts_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB &&
		(engine_ran || rules_local_dirty || alerts_local_dirty))
	{
		/* what the aborted part did is gone: rebuild from the tables */
		reset_engine();
		rules_local_dirty = alerts_local_dirty = true;
		engine_writing = false;
	}
}

/* ---------- triggers ---------- */

PG_FUNCTION_INFO_V1(iotpipe_alert_rules_changed);
Datum
iotpipe_alert_rules_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("iotpipe._alert_rules_changed() must be called as a trigger")));
	ensure_callbacks();
	rules_bump_pending = true;
	rules_local_dirty = true;
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(iotpipe_alerts_changed);
Datum
iotpipe_alerts_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("iotpipe._alerts_changed() must be called as a trigger")));
	ensure_callbacks();
	alerts_bump_pending = true;
	if (!engine_writing)
		alerts_local_dirty = true;
	return PointerGetDatum(NULL);
}

/* called by the install script: whatever was cached belongs to a dropped install */
PG_FUNCTION_INFO_V1(iotpipe_alert_rules_reset);
Datum
iotpipe_alert_rules_reset(PG_FUNCTION_ARGS)
{
	ensure_callbacks();
	rules_bump_pending = alerts_bump_pending = true;
	rules_local_dirty = alerts_local_dirty = true;
	PG_RETURN_VOID();
}

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
} PayloadArgs;

static void
build_payload(StringInfo buf, const PayloadArgs *p)
{
	appendStringInfo(buf, "{\"alert_id\":" INT64_FORMAT, p->alert_id);
	appendStringInfo(buf, ",\"rule_id\":%d", p->rule_id);
	json_str(buf, "rule", p->rule);
	json_str(buf, "kind", p->kind);
	json_str(buf, "sensor_id", p->sensor_id);
	json_str(buf, "location", p->location);
	json_str(buf, "state", p->state);
	json_str(buf, "severity", p->severity);
	json_str(buf, "metric", p->metric);
	json_str(buf, "op", p->op);
	json_num(buf, "value", p->value_null, p->value);
	json_num(buf, "reading", p->reading_null, p->reading);
	json_num(buf, "threshold", p->threshold_null, p->threshold);
	json_ts(buf, "ts", p->ts_null, p->ts);
	json_ts(buf, "started_at", p->started_null, p->started_at);
	appendStringInfoChar(buf, '}');
}

#define ARG_TEXT(n) (PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n)))

PG_FUNCTION_INFO_V1(iotpipe_alert_payload);
Datum
iotpipe_alert_payload(PG_FUNCTION_ARGS)
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
	initStringInfo(&buf);
	build_payload(&buf, &p);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}

/* ---------- loading rules, silences, firing alerts ---------- */

static void
ensure_engine_cxt(void)
{
	HASHCTL		ctl;

	if (engine_cxt != NULL)
		return;
	engine_cxt = AllocSetContextCreate(TopMemoryContext, "iotpipe alerts",
									   ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = SENSOR_KEYLEN;
	ctl.entrysize = sizeof(SensorState);
	ctl.hcxt = engine_cxt;
	sensor_htab = hash_create("iotpipe alert sensors", 1024, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(FiringKey);
	ctl.entrysize = sizeof(FiringEntry);
	ctl.hcxt = engine_cxt;
	firing_htab = hash_create("iotpipe firing alerts", 256, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static char *
getstr(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *v = SPI_getvalue(tup, desc, col);

	return v ? MemoryContextStrdup(rules_cxt, v) : NULL;
}

static double
getf8(HeapTuple tup, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tup, desc, col, isnull);

	return *isnull ? 0 : DatumGetFloat8(d);
}

static uint32
rule_sig(const AlertRule *r, int window_size)
{
	return (uint32) r->kind * 1000003u + (uint32) r->metric * 7919u + (uint32) window_size;
}

static void
load_rules(void)
{
	uint64		v = iotpipe_shared ? pg_atomic_read_u64(&iotpipe_shared->rules_version) : 0;
	int			ret;
	uint64		i;
	TupleDesc	desc;

	ensure_engine_cxt();
	if (rules_cxt != NULL)
		MemoryContextDelete(rules_cxt);
	rules_cxt = AllocSetContextCreate(engine_cxt, "iotpipe alert rules", ALLOCSET_SMALL_SIZES);
	rules = NULL;
	nrules = 0;
	features = NULL;
	nfeatures = 0;
	silences = NULL;
	nsilences = 0;

	ret = SPI_execute("SELECT rule_id, name, kind, metric, sensor_id, location, op, threshold, "
					  "       coalesce(clear_threshold, threshold), "
					  "       extract(epoch FROM for_duration)::float8, severity, "
					  "       window_size, min_samples, "
					  "       extract(epoch FROM rate_window)::float8 "
					  "  FROM iotpipe.alert_rules WHERE enabled ORDER BY rule_id",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.alert_rules: %s", SPI_result_code_string(ret));
	desc = SPI_tuptable->tupdesc;
	rules = MemoryContextAllocZero(rules_cxt, sizeof(AlertRule) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		AlertRule  *r = &rules[nrules];
		bool		isnull;
		char	   *kind = SPI_getvalue(tup, desc, 3);
		char	   *metric = SPI_getvalue(tup, desc, 4);
		int			window_size;

		r->rule_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		r->name = getstr(tup, desc, 2);
		if (strcmp(kind, "threshold") == 0)
			r->kind = RK_THRESHOLD;
		else if (strcmp(kind, "rate") == 0)
			r->kind = RK_RATE;
		else if (strcmp(kind, "offline") == 0)
			r->kind = RK_OFFLINE;
		else if (strcmp(kind, "anomaly") == 0)
			r->kind = RK_ANOMALY;
		else
			continue;
		r->metric = metric == NULL ? RM_NONE :
			strcmp(metric, "temperature") == 0 ? RM_TEMPERATURE : RM_HUMIDITY;
		if (r->kind != RK_OFFLINE && r->metric == RM_NONE)
			continue;
		r->sensor_id = getstr(tup, desc, 5);
		r->location = getstr(tup, desc, 6);
		r->op = getstr(tup, desc, 7);
		r->gt = (r->kind == RK_ANOMALY || r->op == NULL || r->op[0] == '>');
		if (r->kind == RK_ANOMALY)
			r->op = NULL;
		r->threshold = getf8(tup, desc, 8, &isnull);
		if (isnull && r->kind != RK_OFFLINE)
			continue;
		r->clear = getf8(tup, desc, 9, &isnull);
		r->for_us = (int64) (getf8(tup, desc, 10, &isnull) * USECS_PER_SEC);
		if (r->kind == RK_OFFLINE)
			r->threshold = r->clear = (double) r->for_us / USECS_PER_SEC;
		r->severity = getstr(tup, desc, 11);
		window_size = DatumGetInt32(SPI_getbinval(tup, desc, 12, &isnull));
		r->alpha = 2.0 / (window_size + 1.0);
		r->min_samples = DatumGetInt32(SPI_getbinval(tup, desc, 13, &isnull));
		r->rate_tau_us = getf8(tup, desc, 14, &isnull) * USECS_PER_SEC;
		r->sig = rule_sig(r, window_size);
		if (r->kind == RK_RATE)
			r->sig = r->sig * 31u + (uint32) (r->rate_tau_us / 1000);
		nrules++;
		if (nrules >= PG_INT16_MAX)
			break;
	}
	SPI_freetuptable(SPI_tuptable);

	/* the features the rules need, each once */
	features = MemoryContextAllocZero(rules_cxt, sizeof(Feature) * Max(nrules, 1));
	feat_value = MemoryContextAllocZero(rules_cxt, sizeof(double) * Max(nrules, 1));
	feat_ok = MemoryContextAllocZero(rules_cxt, sizeof(bool) * Max(nrules, 1));
	for (i = 0; i < nrules; i++)
	{
		AlertRule  *r = &rules[i];
		Feature		f;
		int			j;

		memset(&f, 0, sizeof(f));
		r->feature = -1;
		if (r->kind == RK_OFFLINE)
			continue;
		f.metric = r->metric;
		f.kind = r->kind == RK_THRESHOLD ? FK_VALUE : r->kind == RK_RATE ? FK_RATE : FK_ANOMALY;
		if (f.kind == FK_RATE)
			f.param = r->rate_tau_us;
		else if (f.kind == FK_ANOMALY)
		{
			f.param = r->alpha;
			f.min_samples = r->min_samples;
		}
		for (j = 0; j < nfeatures; j++)
			if (memcmp(&features[j], &f, sizeof(f)) == 0)
				break;
		if (j == nfeatures)
			features[nfeatures++] = f;
		r->feature = j;
	}

	ret = SPI_execute("SELECT coalesce(rule_id, 0), sensor_id, location, starts_at, ends_at "
					  "  FROM iotpipe.silences WHERE ends_at > now()",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.silences: %s", SPI_result_code_string(ret));
	desc = SPI_tuptable->tupdesc;
	silences = MemoryContextAllocZero(rules_cxt, sizeof(Silence) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		Silence    *s = &silences[nsilences++];
		bool		isnull;

		s->rule_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		s->sensor_id = getstr(tup, desc, 2);
		s->location = getstr(tup, desc, 3);
		s->starts_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		s->ends_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);

	my_rules_version = v;
	rules_loaded = true;
	rules_local_dirty = false;
	rules_gen++;
}

static void
load_firing(void)
{
	uint64		v = alert_shared ? pg_atomic_read_u64(&alert_shared->alerts_version) : 0;
	int			ret;
	uint64		i;
	HASH_SEQ_STATUS seq;
	FiringEntry *fe;

	ensure_engine_cxt();
	/* empty the firing set, keep the sensors (their states resync lazily) */
	hash_seq_init(&seq, firing_htab);
	while ((fe = hash_seq_search(&seq)) != NULL)
		hash_search(firing_htab, &fe->key, HASH_REMOVE, NULL);

	ret = SPI_execute("SELECT rule_id, sensor_id, alert_id, started_at FROM iotpipe.alerts "
					  " WHERE state = 'firing'", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.alerts: %s", SPI_result_code_string(ret));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		FiringKey	key;
		bool		isnull;
		char	   *sid = SPI_getvalue(tup, desc, 2);

		memset(&key, 0, sizeof(key));
		key.rule_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(key.sensor_id, sid, SENSOR_KEYLEN);
		fe = hash_search(firing_htab, &key, HASH_ENTER, NULL);
		fe->alert_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		fe->started_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);

	my_alerts_version = v;
	firing_loaded = true;
	alerts_local_dirty = false;
	firing_gen++;
}

/* reload what changed since this backend last looked */
static void
refresh_caches(void)
{
	ensure_callbacks();
	if (!rules_loaded || rules_local_dirty || iotpipe_shared == NULL ||
		pg_atomic_read_u64(&iotpipe_shared->rules_version) != my_rules_version)
		load_rules();
	if (!firing_loaded || alerts_local_dirty || alert_shared == NULL ||
		pg_atomic_read_u64(&alert_shared->alerts_version) != my_alerts_version)
		load_firing();
}

static FiringEntry *
firing_lookup(int32 rule_id, const char *sensor_id, HASHACTION action)
{
	FiringKey	key;

	memset(&key, 0, sizeof(key));
	key.rule_id = rule_id;
	strlcpy(key.sensor_id, sensor_id, SENSOR_KEYLEN);
	return hash_search(firing_htab, &key, action, NULL);
}

/* ---------- per-sensor state ---------- */

static bool
rule_in_scope(const AlertRule *r, const char *sensor_id, const char *location)
{
	if (r->sensor_id && strcmp(r->sensor_id, sensor_id) != 0)
		return false;
	if (r->location && (location == NULL || strcmp(r->location, location) != 0))
		return false;
	return true;
}

static void
init_state(RuleState *st, const AlertRule *r, int idx)
{
	memset(st, 0, sizeof(*st));
	st->rule_id = r->rule_id;
	st->rule_idx = idx;
	st->sig = (uint8) r->sig;
	st->pending_since = DT_NOBEGIN;
}

/* sync a state's firing flag with this backend's copy of the firing alerts */
static void
sync_firing(SensorState *se, RuleState *st)
{
	const AlertRule *r = &rules[st->rule_idx];
	FiringEntry *fe = firing_lookup(st->rule_id, se->sensor_id, HASH_FIND);

	if (fe)
	{
		if (!st->firing)
		{
			st->firing = true;
			st->pending_since = DT_NOBEGIN;
		}
		/* never let a reading older than the fire resolve it */
		if (r->kind != RK_OFFLINE && fe->started_at > se->last_ts[r->metric])
			se->last_ts[r->metric] = fe->started_at;
	}
	else if (st->firing)
	{
		st->firing = false;
		st->pending_since = DT_NOBEGIN;
	}
}

/* (re)build the states of a sensor for the current rules, keeping what still applies */
static void
build_states(SensorState *se)
{
	RuleState  *old = se->states;
	int			nold = se->nstates;
	FeatState  *oldf = se->feats;
	int			noldf = se->nfeats;
	RuleState  *states;
	FeatState  *feats;
	int			n = 0,
				i,
				j;

	states = MemoryContextAlloc(engine_cxt, sizeof(RuleState) * Max(nrules, 1));
	for (i = 0; i < nrules; i++)
	{
		AlertRule  *r = &rules[i];
		RuleState  *st = &states[n];

		if (!rule_in_scope(r, se->sensor_id, se->location))
			continue;
		for (j = 0; j < nold; j++)
			if (old[j].rule_id == r->rule_id && old[j].sig == (uint8) r->sig)
				break;
		if (j < nold)
		{
			*st = old[j];
			st->rule_idx = i;
		}
		else
			init_state(st, r, i);
		n++;
	}
	/* all features (cheap): a sensor moving in scope keeps its statistics */
	feats = MemoryContextAllocZero(engine_cxt, sizeof(FeatState) * Max(nfeatures, 1));
	for (i = 0; i < nfeatures; i++)
	{
		for (j = 0; j < noldf; j++)
			if (memcmp(&oldf[j].def, &features[i], sizeof(Feature)) == 0)
				break;
		if (j < noldf)
			feats[i] = oldf[j];
		else
			feats[i].def = features[i];
	}
	if (old)
		pfree(old);
	if (oldf)
		pfree(oldf);
	if (se->ridx)
		pfree(se->ridx);
	if (se->active)
		pfree(se->active);
	se->ridx = MemoryContextAlloc(engine_cxt, sizeof(int16) * Max(n, 1));
	se->active = MemoryContextAllocZero(engine_cxt, sizeof(uint64) * ((n + 63) / 64 + 1));
	for (i = 0; i < n; i++)
	{
		se->ridx[i] = states[i].rule_idx;
		if (states[i].firing || states[i].pending_since != DT_NOBEGIN)
			se->active[i / 64] |= UINT64CONST(1) << (i % 64);
	}
	se->states = states;
	se->nstates = n;
	se->feats = feats;
	se->nfeats = nfeatures;
	se->rules_gen = rules_gen;
	se->firing_gen = 0;			/* resync below */
}

/* the location of a sensor we meet for the first time without one */
static char *
lookup_sensor_location(const char *sensor_id)
{
	Datum		arg = CStringGetTextDatum(sensor_id);
	Oid			argtype = TEXTOID;
	char	   *loc = NULL;
	int			ret;

	ret = SPI_execute_with_args("SELECT location FROM iotpipe.sensors WHERE sensor_id = $1",
								1, &argtype, &arg, NULL, true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			loc = MemoryContextStrdup(engine_cxt, v);
	}
	SPI_freetuptable(SPI_tuptable);
	return loc;
}

static SensorState *
sensor_state(IotReading *rd)
{
	bool		found;
	SensorState *se = hash_search(sensor_htab, rd->sensor_id, HASH_ENTER, &found);
	int			i;

	if (!found)
	{
		se->location = rd->location ? MemoryContextStrdup(engine_cxt, rd->location)
			: lookup_sensor_location(rd->sensor_id);
		se->states = NULL;
		se->nstates = 0;
		se->ridx = NULL;
		se->active = NULL;
		se->feats = NULL;
		se->nfeats = 0;
		se->last_ts[0] = se->last_ts[1] = se->last_ts[2] = DT_NOBEGIN;
		se->rules_gen = 0;
		se->firing_gen = 0;
	}
	else if (rd->location &&
			 (se->location == NULL || strcmp(se->location, rd->location) != 0))
	{
		/* moved: the rules in scope may differ */
		if (se->location)
			pfree(se->location);
		se->location = MemoryContextStrdup(engine_cxt, rd->location);
		se->rules_gen = 0;
	}
	if (se->rules_gen != rules_gen)
	{
		flush_events();			/* queued events point into the old states */
		build_states(se);
	}
	if (se->firing_gen != firing_gen)
	{
		for (i = 0; i < se->nstates; i++)
		{
			sync_firing(se, &se->states[i]);
			if (se->states[i].firing)
				se->active[i / 64] |= UINT64CONST(1) << (i % 64);
		}
		se->firing_gen = firing_gen;
	}
	return se;
}

/* ---------- silences ---------- */

static bool
is_silenced(const AlertRule *r, const char *sensor_id, const char *location)
{
	TimestampTz now;
	int			i;

	if (nsilences == 0)
		return false;
	now = GetCurrentTimestamp();
	for (i = 0; i < nsilences; i++)
	{
		Silence    *s = &silences[i];

		if (s->starts_at > now || s->ends_at <= now)
			continue;
		if (s->rule_id != 0 && s->rule_id != r->rule_id)
			continue;
		if (s->sensor_id && strcmp(s->sensor_id, sensor_id) != 0)
			continue;
		if (s->location && (location == NULL || strcmp(s->location, location) != 0))
			continue;
		return true;
	}
	return false;
}

/* ---------- fire and resolve ---------- */

static SPIPlanPtr
keep_plan_opts(const char *sql, int nargs, Oid *types, int cursor_options)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, cursor_options);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static SPIPlanPtr
keep_plan(const char *sql, int nargs, Oid *types)
{
	return keep_plan_opts(sql, nargs, types, 0);
}

static void
notify(const AlertRule *r, const SensorState *se, int64 alert_id, const char *state,
	   bool value_null, double value, bool reading_null, double reading,
	   TimestampTz ts, TimestampTz started_at)
{
	PayloadArgs p;
	StringInfoData buf;

	p.alert_id = alert_id;
	p.rule_id = r->rule_id;
	p.rule = r->name;
	p.kind = kind_names[r->kind];
	p.sensor_id = se->sensor_id;
	p.location = se->location;
	p.state = state;
	p.severity = r->severity;
	p.metric = metric_names[r->metric];
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
	initStringInfo(&buf);
	build_payload(&buf, &p);
	Async_Notify(ALERTS_CHANNEL, buf.data);
	pfree(buf.data);
}

/*
 * Fires and resolves are queued while a batch is evaluated and written
 * with an UPDATE and an INSERT per round (over unnest()ed arrays), then
 * notified in the order they happened.  A (rule, sensor) alternates fire and
 * resolve; its k-th queued event goes to a later round than the one before
 * (resolves run before fires in a round), so no statement sees a key twice
 * and a resolve of a fire queued earlier finds its alert_id.
 */
struct AlertEvent
{
	bool		fire;
	bool		value_null;
	bool		reading_null;
	bool		silenced;
	bool		done;			/* written: notify */
	int16		rule_idx;
	int16		round;
	int32		fire_ref;		/* resolve of a queued fire: its event, else -1 */
	SensorState *se;
	RuleState  *st;
	double		value;
	double		reading;
	TimestampTz ts;
	int64		alert_id;		/* resolve: known; fire: assigned by the INSERT */
	TimestampTz started_at;
};


static void
queue_event(const AlertRule *r, SensorState *se, RuleState *st, bool fire, bool value_null,
			double value, bool reading_null, double reading, TimestampTz ts, int64 alert_id)
{
	AlertEvent *ev;
	int			round = 0;
	int			fire_ref = -1;

	if (st->queued)
	{
		AlertEvent *last = &events[st->qlast];

		if (last->round >= 1000)
		{
			flush_events();		/* a very long chain: write what we have */
			return queue_event(r, se, st, fire, value_null, value, reading_null, reading, ts,
							   alert_id);
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
	ev->rule_idx = r - rules;
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
	ev->silenced = is_silenced(r, se->sensor_id, se->location);
	st->queued = true;
	st->qlast = nevents - 1;
}

static void
fire(const AlertRule *r, SensorState *se, RuleState *st, double value, double reading,
	 TimestampTz ts)
{
	st->firing = true;
	st->pending_since = DT_NOBEGIN;
	queue_event(r, se, st, true, false, value, false, reading, ts, 0);
}

static void
resolve(const AlertRule *r, SensorState *se, RuleState *st, bool value_null, double value,
		bool reading_null, double reading, TimestampTz ts)
{
	int64		alert_id = 0;

	st->firing = false;
	st->pending_since = DT_NOBEGIN;
	if (!st->queued)
	{
		/* the alert_id of a fire still queued is known at the flush */
		FiringEntry *fe = firing_lookup(r->rule_id, se->sensor_id, HASH_FIND);

		if (fe == NULL)
		{
			/* cannot happen: firing states mirror the firing set */
			alerts_local_dirty = true;
			return;
		}
		alert_id = fe->alert_id;
	}
	queue_event(r, se, st, false, value_null, value, reading_null, reading, ts, alert_id);
}

static Datum
text_array(Datum *elems, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false,
											  TYPALIGN_INT));
}

static Datum
f8_array(Datum *elems, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, FLOAT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
by_val_array(Datum *elems, int n, Oid type, int len)
{
	return PointerGetDatum(construct_array(elems, n, type, len, true,
										   len == 4 ? TYPALIGN_INT : TYPALIGN_DOUBLE));
}

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
		Oid			types[3] = {INT8ARRAYOID, 1185 /* timestamptz[] */ , FLOAT8ARRAYOID};

		/*
		 * Planned for each call: a generic plan made while iotpipe.alerts was
		 * small (and never analyzed) scans the whole table, and the table
		 * only grows.  With the ids at hand the planner reads them through
		 * the primary key.
		 */
		resolve_plan = keep_plan_opts("UPDATE iotpipe.alerts AS a "
								 "   SET state = 'resolved', resolved_at = u.ts, "
								 "       resolved_value = u.v, resolved_wall = now() "
								 "  FROM unnest($1, $2, $3) AS u(id, ts, v) "
								 " WHERE a.alert_id = ANY ($1) AND a.alert_id = u.id "
								 "   AND a.state <> 'resolved' "
								 "RETURNING a.alert_id, a.started_at",
									  3, types, CURSOR_OPT_CUSTOM_PLAN);
	}
	args[0] = by_val_array(aids, n, INT8OID, 8);
	args[1] = by_val_array(tss, n, TIMESTAMPTZOID, 8);
	args[2] = f8_array(vals, vnulls, n);
	engine_writing = true;
	ret = SPI_execute_plan(resolve_plan, args, NULL, false, 0);
	engine_writing = false;
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
		alerts_bump_pending = true;
	SPI_freetuptable(SPI_tuptable);
}

static void
write_fires(int round)
{
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
	Datum		args[10];
	int			ret;
	uint64		k;

	for (i = 0; i < nevents; i++)
	{
		AlertEvent *ev = &events[i];
		AlertRule  *r = &rules[ev->rule_idx];

		if (!ev->fire || ev->round != round)
			continue;
		rids[n] = Int32GetDatum(r->rule_id);
		sids[n] = CStringGetTextDatum(ev->se->sensor_id);
		locnulls[n] = (ev->se->location == NULL);
		locs[n] = locnulls[n] ? (Datum) 0 : CStringGetTextDatum(ev->se->location);
		sevs[n] = CStringGetTextDatum(r->severity);
		mnulls[n] = (r->metric == RM_NONE);
		metrics[n] = mnulls[n] ? (Datum) 0 : CStringGetTextDatum(metric_names[r->metric]);
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
		Oid			types[10] = {INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID, FLOAT8ARRAYOID,
		1185 /* timestamptz[] */ , BOOLARRAYOID};

		fire_plan = keep_plan("INSERT INTO iotpipe.alerts AS a "
							  "  (rule_id, sensor_id, location, severity, state, metric, value, "
							  "   reading, threshold, started_at, silenced) "
							  "SELECT u.r, u.s, u.l, u.sev, 'firing', u.m, u.v, u.rd, u.th, u.ts, u.sil "
							  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
							  "       AS u(r, s, l, sev, m, v, rd, th, ts, sil) "
							  "ON CONFLICT (rule_id, sensor_id) WHERE state = 'firing' DO NOTHING "
							  "RETURNING a.rule_id, a.sensor_id, a.alert_id",
							  10, types);
	}
	args[0] = by_val_array(rids, n, INT4OID, 4);
	args[1] = text_array(sids, NULL, n);
	args[2] = text_array(locs, locnulls, n);
	args[3] = text_array(sevs, NULL, n);
	args[4] = text_array(metrics, mnulls, n);
	args[5] = f8_array(vals, NULL, n);
	args[6] = f8_array(reads, NULL, n);
	args[7] = f8_array(ths, NULL, n);
	args[8] = by_val_array(tss, n, TIMESTAMPTZOID, 8);
	args[9] = PointerGetDatum(construct_array(sils, n, BOOLOID, 1, true, TYPALIGN_CHAR));
	engine_writing = true;
	ret = SPI_execute_plan(fire_plan, args, NULL, false, 0);
	engine_writing = false;
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into iotpipe.alerts: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
		alerts_bump_pending = true;
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
	AlertRule  *r = &rules[ev->rule_idx];
	Datum		args[2];
	int			ret;

	if (adopt_plan == NULL)
	{
		Oid			types[2] = {INT4OID, TEXTOID};

		adopt_plan = keep_plan("SELECT alert_id, started_at FROM iotpipe.alerts "
							   " WHERE rule_id = $1 AND sensor_id = $2 AND state = 'firing'",
							   2, types);
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
	alerts_local_dirty = true;
	SPI_freetuptable(SPI_tuptable);
}

/* write the queued events round by round, then notify them in order */
static void
flush_events(void)
{
	int			i,
				round,
				maxround = 0;

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
	{
		AlertEvent *ev = &events[i];
		AlertRule  *r = &rules[ev->rule_idx];

		ev->st->queued = false;
		if (ev->fire)
		{
			if (ev->alert_id != 0)
			{
				FiringEntry *fe = firing_lookup(r->rule_id, ev->se->sensor_id, HASH_ENTER);

				fe->alert_id = ev->alert_id;
				fe->started_at = ev->started_at;
			}
		}
		else
			firing_lookup(r->rule_id, ev->se->sensor_id, HASH_REMOVE);
		if (ev->done && !ev->silenced)
			notify(r, ev->se, ev->alert_id, ev->fire ? "firing" : "resolved",
				   ev->value_null, ev->value, ev->reading_null || r->kind == RK_OFFLINE,
				   ev->reading, ev->ts, ev->started_at);
	}
	nevents = 0;
}

/* ---------- evaluation ---------- */

/* update the sensor's features with one reading of a metric */
static void
update_features(SensorState *se, RuleMetric metric, double x, TimestampTz ts)
{
	int			f;

	for (f = 0; f < se->nfeats; f++)
	{
		FeatState  *fs = &se->feats[f];

		if (fs->def.metric != metric)
			continue;
		switch (fs->def.kind)
		{
			case FK_VALUE:
				feat_value[f] = x;
				feat_ok[f] = true;
				break;
			case FK_RATE:
				{
					double		dt_us = (double) (ts - fs->prev_ts);
					double		raw;
					bool		had = fs->has_prev;
					double		prev = fs->prev_value;

					fs->has_prev = true;
					fs->prev_value = x;
					fs->prev_ts = ts;
					if (!had || dt_us <= 0)
						break;
					raw = (x - prev) / (dt_us / (60.0 * USECS_PER_SEC));
					if (fs->def.param <= 0)
						fs->mean = raw;
					else
					{
						/* EWMA over time, from 0: single noisy steps do not count */
						double		a = 1.0 - exp(-dt_us / fs->def.param);

						fs->mean += a * (raw - fs->mean);
					}
					feat_value[f] = fs->mean;
					feat_ok[f] = true;
					break;
				}
			case FK_ANOMALY:
				{
					/* z-score against the statistics before this reading */
					double		diff = x - fs->mean;
					double		alpha = fs->def.param;

					feat_value[f] = fabs(diff) / Max(sqrt(fs->var), ANOMALY_MIN_STDDEV);
					feat_ok[f] = (fs->n >= fs->def.min_samples);
					/* a stuck sensor repeating itself says nothing about the spread */
					if (fs->has_prev && x == fs->prev_value)
						break;
					fs->has_prev = true;
					fs->prev_value = x;
					if (fs->n == 0)
					{
						fs->mean = x;
						fs->var = 0;
					}
					else
					{
						double		incr = alpha * diff;

						fs->mean += incr;
						fs->var = (1.0 - alpha) * (fs->var + diff * incr);
					}
					if (fs->n < PG_INT32_MAX)
						fs->n++;
					break;
				}
		}
	}
}

static inline bool
breaches(const AlertRule *r, double v)
{
	return r->gt ? v > r->threshold : v < r->threshold;
}

static inline bool
is_safe(const AlertRule *r, double v)
{
	return r->gt ? v < r->clear : v > r->clear;
}

static void
evaluate_reading(IotReading *rd)
{
	SensorState *se = sensor_state(rd);
	bool		mok[3];
	double		mval[3];
	int			i;

	/* late or repeated readings never move the state */
	mok[RM_NONE] = false;
	mok[RM_TEMPERATURE] = rd->has_temperature && rd->ts > se->last_ts[RM_TEMPERATURE];
	mok[RM_HUMIDITY] = rd->has_humidity && rd->ts > se->last_ts[RM_HUMIDITY];
	mval[RM_NONE] = 0;
	mval[RM_TEMPERATURE] = rd->temperature;
	mval[RM_HUMIDITY] = rd->humidity;
	memset(feat_ok, 0, sizeof(bool) * se->nfeats);
	if (mok[RM_TEMPERATURE])
	{
		se->last_ts[RM_TEMPERATURE] = rd->ts;
		update_features(se, RM_TEMPERATURE, rd->temperature, rd->ts);
	}
	if (mok[RM_HUMIDITY])
	{
		se->last_ts[RM_HUMIDITY] = rd->ts;
		update_features(se, RM_HUMIDITY, rd->humidity, rd->ts);
	}

	/*
	 * The common case, a rule that is idle (not firing, nothing pending) and
	 * not breached, touches only the shared rules[] and this sensor's ridx[]
	 * and active bits, not its RuleState: the states of a thousand sensors
	 * do not fit in a CPU cache, the rules do.
	 */
	for (i = 0; i < se->nstates; i++)
	{
		const AlertRule *r = &rules[se->ridx[i]];
		bool		active = (se->active[i / 64] >> (i % 64)) & 1;
		RuleState  *st;
		double		v;

		if (r->kind == RK_OFFLINE)
		{
			/* any reading ends an offline alert */
			if (active && se->states[i].firing)
				resolve(r, se, &se->states[i], true, 0, true, 0, rd->ts);
			continue;
		}
		if (!feat_ok[r->feature])
			continue;
		v = feat_value[r->feature];
		if (!active && !breaches(r, v))
			continue;
		st = &se->states[i];
		if (st->firing)
		{
			if (is_safe(r, v))
				resolve(r, se, st, false, v, false, mval[r->metric], rd->ts);
		}
		else if (!breaches(r, v))
			st->pending_since = DT_NOBEGIN;
		else
		{
			if (st->pending_since == DT_NOBEGIN)
				st->pending_since = rd->ts;
			if (rd->ts - st->pending_since >= r->for_us)
				fire(r, se, st, v, mval[r->metric], rd->ts);
		}
		if (st->firing || st->pending_since != DT_NOBEGIN || st->queued)
			se->active[i / 64] |= UINT64CONST(1) << (i % 64);
		else
			se->active[i / 64] &= ~(UINT64CONST(1) << (i % 64));
	}
}

void
iotpipe_alerts_process_batch(IotBatch *batch)
{
	int			n = iotpipe_batch_nreadings(batch);
	IotReading *readings = iotpipe_batch_readings(batch);
	int			i;

	if (n == 0)
		return;
	refresh_caches();
	if (nrules == 0)
		return;
	engine_ran = true;
	nevents = 0;
	for (i = 0; i < n; i++)
		evaluate_reading(&readings[i]);
	flush_events();
}

/* ---------- timers (launcher) ---------- */

void
iotpipe_alerts_tick(void)
{
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* an older install without the timers function: nothing to do */
	ret = SPI_execute("SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
					  " WHERE n.nspname = 'iotpipe' AND p.proname = '_alert_timers'",
					  true, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		ret = SPI_execute("SELECT iotpipe._alert_timers()", false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "iotpipe._alert_timers() failed: %s", SPI_result_code_string(ret));
	}
	SPI_finish();
}
