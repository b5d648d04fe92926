/*-------------------------------------------------------------------------
 *
 * alert_cache.c
 *	  What the alert engine keeps between batches, in backend-local memory,
 *	  and when it is thrown away.
 *
 *	  Each backend that ingests keeps:
 *	    - the enabled rules and the silences (reloaded when the shared
 *	      counter IotShared->rules_version moved: triggers on alert_rules
 *	      and silences bump it when their transaction commits);
 *	    - per sensor: its last known location, the newest event time per
 *	      metric, its feature statistics, and per rule in scope a small
 *	      RuleState (pending breach streak, firing) plus an "active" bit,
 *	      so idle rules cost one compare each (the structs of alert_eval.h,
 *	      built here, evaluated there);
 *	    - its copy of the firing alerts (rule_id, sensor_id) -> alert_id,
 *	      reloaded when the counter AlertShared->alerts_version moved
 *	      (bumped at commit by whoever changed iotpipe.alerts: the engine
 *	      of another backend, the launcher's offline check, a user).
 *
 *	  On abort of a transaction (or subtransaction) in which the engine
 *	  ran, all of it is dropped and rebuilt from the tables: the readings
 *	  it was derived from are gone too.  Pending streaks, rate and anomaly
 *	  statistics are not persisted: after a restart they start afresh
 *	  (firing alerts are reloaded from the table).  The queued events of
 *	  the batch are alert_write.c's, dropped by its own callbacks.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "shmem.h"
#include "alert_cache.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct Silence
{
	int32		rule_id;		/* 0 = any */
	char	   *sensor_id;
	char	   *location;
	TimestampTz starts_at;
	TimestampTz ends_at;
} Silence;

/* shared memory of the engine: the firing-alerts change counter */
typedef struct AlertShared
{
	pg_atomic_uint64 alerts_version;
} AlertShared;

static AlertShared *alert_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* backend-local engine state */
AlertRuleSet iotpipe_alert_rules;
uint64		iotpipe_alert_rules_gen = 1;
uint64		iotpipe_alert_firing_gen = 1;

static MemoryContext engine_cxt = NULL;
static MemoryContext rules_cxt = NULL;
static Silence *silences = NULL;
static int	nsilences = 0;
static HTAB *sensor_htab = NULL;
static HTAB *firing_htab = NULL;
static uint64 my_rules_version = 0;	/* 0 = never loaded */
static uint64 my_alerts_version = 0;
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

static void alerts_xact_callback(XactEvent event, void *arg);
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
iotpipe_alert_cache_init(void)
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
	memset(&iotpipe_alert_rules, 0, sizeof(iotpipe_alert_rules));
	silences = NULL;
	nsilences = 0;
	sensor_htab = NULL;
	firing_htab = NULL;
	my_rules_version = my_alerts_version = 0;
	rules_loaded = firing_loaded = false;
	iotpipe_alert_rules_gen++;
	iotpipe_alert_firing_gen++;
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

void
iotpipe_alert_cache_writing(bool writing)
{
	engine_writing = writing;
}

void
iotpipe_alert_cache_wrote(void)
{
	alerts_bump_pending = true;
}

void
iotpipe_alert_cache_firing_stale(void)
{
	alerts_local_dirty = true;
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
	ctl.keysize = ALERT_SENSOR_KEYLEN;
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

/*
 * The loads below read the shared version counter first and then query with
 * read_only = false: SPI then takes a new snapshot (READ COMMITTED), taken
 * after the counter was read.  With the statement's snapshot, a rule change
 * committed between that snapshot and the counter read would be recorded
 * as loaded while the old rules were read, and never reloaded.
 */
static void
load_rules(void)
{
	uint64		v = iotpipe_shared ? pg_atomic_read_u64(&iotpipe_shared->rules_version) : 0;
	AlertRuleSet *rs = &iotpipe_alert_rules;
	AlertRule  *rules;
	int			nrules = 0;
	int			ret;
	uint64		i;
	TupleDesc	desc;

	ensure_engine_cxt();
	if (rules_cxt != NULL)
		MemoryContextDelete(rules_cxt);
	rules_cxt = AllocSetContextCreate(engine_cxt, "iotpipe alert rules", ALLOCSET_SMALL_SIZES);
	memset(rs, 0, sizeof(*rs));
	silences = NULL;
	nsilences = 0;

	ret = SPI_execute("SELECT rule_id, name, kind, metric, sensor_id, location, op, threshold, "
					  "       coalesce(clear_threshold, threshold), "
					  "       extract(epoch FROM for_duration)::float8, severity, "
					  "       window_size, min_samples, "
					  "       extract(epoch FROM rate_window)::float8, statistic, "
					  "       extract(epoch FROM warmup)::float8 "
					  "  FROM iotpipe.alert_rules WHERE enabled ORDER BY rule_id",
					  false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.alert_rules: %s", SPI_result_code_string(ret));
	desc = SPI_tuptable->tupdesc;
	rules = MemoryContextAllocZero(rules_cxt, sizeof(AlertRule) * Max(SPI_processed, 1));
	rs->rules = rules;
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
		else if (strcmp(kind, "drift") == 0)
			r->kind = RK_DRIFT;
		else
			continue;
		r->metric = metric == NULL ? RM_NONE :
			strcmp(metric, "temperature") == 0 ? RM_TEMPERATURE : RM_HUMIDITY;
		if (r->kind != RK_OFFLINE && r->metric == RM_NONE)
			continue;
		r->sensor_id = getstr(tup, desc, 5);
		r->location = getstr(tup, desc, 6);
		r->op = getstr(tup, desc, 7);
		r->gt = (r->kind == RK_ANOMALY || r->kind == RK_DRIFT || r->op == NULL ||
				 r->op[0] == '>');
		if (r->kind == RK_ANOMALY || r->kind == RK_DRIFT)
			r->op = NULL;
		{
			char	   *stat = SPI_getvalue(tup, desc, 15);

			r->statistic = (stat != NULL && strcmp(stat, "zscore") == 0) ? AS_ZSCORE : AS_ROBUST;
		}
		r->warmup_us = (int64) (getf8(tup, desc, 16, &isnull) * USECS_PER_SEC);
		r->threshold = getf8(tup, desc, 8, &isnull);
		if (isnull && (r->kind == RK_ANOMALY || r->kind == RK_DRIFT))
		{
			/* NULL: the statistic's default (docs/alerts.md) */
			r->threshold = r->kind == RK_DRIFT ? DRIFT_DEFAULT_THRESHOLD :
				r->statistic == AS_ROBUST ? ANOMALY_ROBUST_DEFAULT_THRESHOLD :
				ANOMALY_ZSCORE_DEFAULT_THRESHOLD;
		}
		else if (isnull && r->kind != RK_OFFLINE)
			continue;
		r->clear = getf8(tup, desc, 9, &isnull);
		if (isnull && r->kind == RK_DRIFT)
			r->clear = r->threshold * DRIFT_DEFAULT_CLEAR_SHARE;	/* CUSUM back near 0 */
		else if (isnull || ((r->kind == RK_ANOMALY || r->kind == RK_DRIFT) &&
							r->clear > r->threshold))
			r->clear = r->threshold;
		r->for_us = (int64) (getf8(tup, desc, 10, &isnull) * USECS_PER_SEC);
		if (r->kind == RK_OFFLINE)
			r->threshold = r->clear = (double) r->for_us / USECS_PER_SEC;
		r->severity = getstr(tup, desc, 11);
		window_size = DatumGetInt32(SPI_getbinval(tup, desc, 12, &isnull));
		r->alpha = 2.0 / (window_size + 1.0);
		r->min_samples = DatumGetInt32(SPI_getbinval(tup, desc, 13, &isnull));
		r->rate_tau_us = getf8(tup, desc, 14, &isnull) * USECS_PER_SEC;
		r->sig = iotpipe_alert_rule_sig(r, window_size);
		nrules++;
	}
	SPI_freetuptable(SPI_tuptable);
	rs->nrules = nrules;

	/* the features the rules need, each once */
	rs->features = MemoryContextAllocZero(rules_cxt, sizeof(Feature) * Max(nrules, 1));
	rs->feat_value = MemoryContextAllocZero(rules_cxt, sizeof(double) * Max(nrules, 1));
	rs->feat_ok = MemoryContextAllocZero(rules_cxt, sizeof(bool) * Max(nrules, 1));
	rs->feat_explain = MemoryContextAllocZero(rules_cxt, sizeof(FeatExplain) * Max(nrules, 1));
	rs->nfeatures = iotpipe_alert_plan_features(rules, nrules, rs->features);

	ret = SPI_execute("SELECT coalesce(rule_id, 0), sensor_id, location, starts_at, ends_at "
					  "  FROM iotpipe.silences WHERE ends_at > pg_catalog.now()",
					  false, 0);
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
	iotpipe_alert_rules_gen++;
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
					  " WHERE state = 'firing'", false, 0);
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
		strlcpy(key.sensor_id, sid, ALERT_SENSOR_KEYLEN);
		fe = hash_search(firing_htab, &key, HASH_ENTER, NULL);
		fe->alert_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		fe->started_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);

	my_alerts_version = v;
	firing_loaded = true;
	alerts_local_dirty = false;
	iotpipe_alert_firing_gen++;
}

int
iotpipe_alert_cache_refresh(void)
{
	ensure_callbacks();
	if (!rules_loaded || rules_local_dirty || iotpipe_shared == NULL ||
		pg_atomic_read_u64(&iotpipe_shared->rules_version) != my_rules_version)
		load_rules();
	if (!firing_loaded || alerts_local_dirty || alert_shared == NULL ||
		pg_atomic_read_u64(&alert_shared->alerts_version) != my_alerts_version)
		load_firing();
	if (iotpipe_alert_rules.nrules > 0)
		engine_ran = true;
	return iotpipe_alert_rules.nrules;
}

FiringEntry *
iotpipe_alert_firing(int32 rule_id, const char *sensor_id, HASHACTION action)
{
	FiringKey	key;

	memset(&key, 0, sizeof(key));
	key.rule_id = rule_id;
	strlcpy(key.sensor_id, sensor_id, ALERT_SENSOR_KEYLEN);
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
	const AlertRule *r = &iotpipe_alert_rules.rules[st->rule_idx];
	FiringEntry *fe = iotpipe_alert_firing(st->rule_id, se->sensor_id, HASH_FIND);

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

/* whether two features can share one RobustModel: the same baseline */
static bool
same_baseline(const Feature *a, const Feature *b)
{
	return iotpipe_alert_feature_has_model(a) && iotpipe_alert_feature_has_model(b) &&
		a->metric == b->metric && a->param == b->param &&
		a->min_samples == b->min_samples && a->warmup_us == b->warmup_us;
}

/* (re)build the states of a sensor for the current rules, keeping what still applies */
static void
build_states(SensorState *se)
{
	const AlertRuleSet *rs = &iotpipe_alert_rules;
	RuleState  *old = se->states;
	int			nold = se->nstates;
	FeatState  *oldf = se->feats;
	int			noldf = se->nfeats;
	RuleState  *states;
	FeatState  *feats;
	int			n = 0,
				i,
				j;

	bool	   *used;
	bool	   *kept;
	int			nf = 0;

	/* state for the rules in the sensor's scope only, features likewise */
	for (i = 0; i < rs->nrules; i++)
		if (rule_in_scope(&rs->rules[i], se->sensor_id, se->location))
			n++;
	states = MemoryContextAlloc(engine_cxt, sizeof(RuleState) * Max(n, 1));
	used = palloc0(sizeof(bool) * Max(rs->nfeatures, 1));
	n = 0;
	for (i = 0; i < rs->nrules; i++)
	{
		AlertRule  *r = &rs->rules[i];
		RuleState  *st = &states[n];

		if (!rule_in_scope(r, se->sensor_id, se->location))
			continue;
		if (r->feature >= 0 && !used[r->feature])
		{
			used[r->feature] = true;
			nf++;
		}
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
	/* the statistics of a feature the sensor still needs are kept */
	feats = MemoryContextAllocZero(engine_cxt, sizeof(FeatState) * Max(nf, 1));
	if (se->featidx)
		pfree(se->featidx);
	se->featidx = MemoryContextAlloc(engine_cxt, sizeof(int32) * Max(nf, 1));
	kept = palloc0(sizeof(bool) * Max(noldf, 1));
	nf = 0;
	for (i = 0; i < rs->nfeatures; i++)
	{
		if (!used[i])
			continue;
		for (j = 0; j < noldf; j++)
			if (!kept[j] && memcmp(&oldf[j].def, &rs->features[i], sizeof(Feature)) == 0)
				break;
		if (j < noldf)
		{
			feats[nf] = oldf[j];
			kept[j] = true;
		}
		else
			feats[nf].def = rs->features[i];
		se->featidx[nf] = i;
		nf++;
	}

	/*
	 * A robust anomaly and a drift feature of the same metric and window
	 * share one baseline (alert_eval.c observes it once per reading): a new
	 * one takes the model of a compatible feature if there is one.
	 */
	for (i = 0; i < nf; i++)
	{
		if (feats[i].model || !iotpipe_alert_feature_has_model(&feats[i].def))
			continue;
		for (j = 0; j < nf; j++)
			if (j != i && feats[j].model && same_baseline(&feats[i].def, &feats[j].def))
				break;
		feats[i].model = j < nf ? feats[j].model :
			MemoryContextAllocZero(engine_cxt, sizeof(RobustModel));
	}
	/* the baselines no feature needs any more, each once */
	for (j = 0; j < noldf; j++)
	{
		int			k;
		bool		in_use = false;

		if (kept[j] || oldf[j].model == NULL)
			continue;
		for (k = 0; k < nf && !in_use; k++)
			in_use = feats[k].model == oldf[j].model;
		for (k = 0; k < j && !in_use; k++)
			in_use = !kept[k] && oldf[k].model == oldf[j].model;	/* freed already */
		if (!in_use)
			pfree(oldf[j].model);
	}
	pfree(kept);
	pfree(used);
	if (old)
		pfree(old);
	if (oldf)
		pfree(oldf);
	if (se->ridx)
		pfree(se->ridx);
	if (se->active)
		pfree(se->active);
	se->ridx = MemoryContextAlloc(engine_cxt, sizeof(int32) * Max(n, 1));
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
	se->nfeats = nf;
	se->rules_gen = iotpipe_alert_rules_gen;
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

SensorState *
iotpipe_alert_sensor(const IotReading *rd)
{
	bool		found;
	SensorState *se = hash_search(sensor_htab, rd->sensor_id, HASH_ENTER, &found);

	if (!found)
	{
		se->location = rd->location ? MemoryContextStrdup(engine_cxt, rd->location)
			: lookup_sensor_location(rd->sensor_id);
		se->states = NULL;
		se->nstates = 0;
		se->ridx = NULL;
		se->active = NULL;
		se->feats = NULL;
		se->featidx = NULL;
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
	return se;
}

void
iotpipe_alert_sensor_sync(SensorState *se)
{
	int			i;

	if (se->rules_gen != iotpipe_alert_rules_gen)
		build_states(se);
	if (se->firing_gen != iotpipe_alert_firing_gen)
	{
		for (i = 0; i < se->nstates; i++)
		{
			sync_firing(se, &se->states[i]);
			if (se->states[i].firing)
				se->active[i / 64] |= UINT64CONST(1) << (i % 64);
		}
		se->firing_gen = iotpipe_alert_firing_gen;
	}
}

/* ---------- silences ---------- */

bool
iotpipe_alert_silenced(const AlertRule *r, const char *sensor_id, const char *location)
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
