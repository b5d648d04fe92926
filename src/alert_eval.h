/*-------------------------------------------------------------------------
 *
 * alert_eval.h
 *	  What the alert engine knows of a rule and of a sensor, and the pure
 *	  evaluation of one reading against them (alert_eval.c).
 *
 *	  The structs are filled by alert_cache.c (rules from SQL, states per
 *	  sensor), read by alert_write.c (what to write and notify) and judged
 *	  here, with no SPI and no catalog access.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ALERT_EVAL_H
#define IOTPIPE_ALERT_EVAL_H

#include "jsonmsg.h"

/* a sensor_id as the hash keys of the engine hold it */
#define ALERT_SENSOR_KEYLEN		(IOTPIPE_MAX_SENSOR_ID * 4 + 1)

typedef enum RuleKind
{
	RK_THRESHOLD,
	RK_RATE,
	RK_OFFLINE,
	RK_ANOMALY,
	RK_DRIFT
} RuleKind;

/* anomaly: which statistic (alert_rules.statistic); docs/alerts.md */
typedef enum AnomalyStatistic
{
	AS_ZSCORE,					/* 0.1.0: EWMA mean and variance, z > threshold */
	AS_ROBUST					/* robust scale, daily baseline, tail of the recent z */
} AnomalyStatistic;

/* defaults of a NULL threshold (alert_rules.threshold) */
#define ANOMALY_ZSCORE_DEFAULT_THRESHOLD	4.0
#define ANOMALY_ROBUST_DEFAULT_THRESHOLD	6.0
#define DRIFT_DEFAULT_THRESHOLD				50.0
#define DRIFT_DEFAULT_CLEAR_SHARE			0.1 /* NULL clear_threshold: 1/10 of it */

typedef enum RuleMetric
{
	RM_NONE,
	RM_TEMPERATURE,
	RM_HUMIDITY
} RuleMetric;

/* as iotpipe.alert_rules spells them, indexed by RuleKind and RuleMetric */
extern const char *const iotpipe_alert_kind_names[];
extern const char *const iotpipe_alert_metric_names[];

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
	AnomalyStatistic statistic; /* anomaly */
	int64		warmup_us;		/* anomaly (robust), drift: event time before judging */
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
	FK_ANOMALY,					/* zscore */
	FK_ROBUST,					/* anomaly, robust */
	FK_DRIFT
} FeatKind;

typedef struct Feature
{
	FeatKind	kind;
	RuleMetric	metric;
	double		param;			/* rate: tau (us); anomaly, drift: alpha */
	int			min_samples;	/* anomaly, drift */
	int64		warmup_us;		/* robust, drift */
} Feature;

/*
 * The baseline of a sensor's metric for the robust anomaly and drift
 * features (alert_eval.c, docs/alerts.md): an EWMA level with an EWMA of
 * absolute deviations as its scale, the same per hour of the day (UTC), the
 * choice between the two, and the statistics built on the residual.  O(1):
 * about 700 bytes per sensor and baseline, allocated by alert_cache.c; a
 * robust anomaly and a drift feature with the same metric, window, warm-up
 * share one (the reading is observed once).
 */
#define ALERT_DAY_BUCKETS	24

typedef struct RobustModel
{
	int32		n;				/* readings seen */
	TimestampTz first_ts;		/* event time of the first one */
	TimestampTz prev_ts;
	double		dt;				/* EWMA of the sampling interval, seconds (0 = unknown) */
	double		mu;				/* level: EWMA of the value */
	double		mad;			/* EWMA of |x - mu| */
	double		hmu[ALERT_DAY_BUCKETS]; /* per hour of the day: level */
	double		hmad[ALERT_DAY_BUCKETS];	/* ... and absolute deviation */
	double		hdays[ALERT_DAY_BUCKETS];	/* ... days of readings it has seen */
	double		err_flat;		/* EWMA of the clipped |residual| of each baseline */
	double		err_daily;
	int32		nerr;
	/* robust anomaly: z smoothed, and its long-run mean and variance */
	double		zs;
	double		zmean;
	double		zvar;
	int32		nz;
	/* drift: scale of the residual, two one-sided CUSUMs */
	double		rscale;
	int32		nres;
	double		cusum_up;
	double		cusum_down;
	/* the last reading's residual, scale and baseline (shared models observe once) */
	double		last_resid;
	double		last_scale;
	double		last_baseline;
} RobustModel;

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
	RobustModel *model;			/* robust, drift (alert_cache.c allocates it) */
} FeatState;

/* why a feature has its value: for the alerts row and the payload */
typedef struct FeatExplain
{
	double		baseline;		/* what the value was expected to be */
	double		scale;			/* its spread (a standard deviation) */
	double		score;			/* signed: z of the reading, or the drift's CUSUM */
} FeatExplain;

/* per (rule, sensor) evaluation state: small, the loop over rules is hot */
typedef struct RuleState
{
	TimestampTz pending_since;	/* start of the breach streak; DT_NOBEGIN = none */
	int32		rule_id;
	int32		rule_idx;		/* into rules[] of the current generation */
	bool		firing;
	bool		queued;			/* has events in the write queue */
	uint8		sig;			/* low bits of the rule's sig */
	int32		qlast;			/* its last queued event */
} RuleState;

typedef struct SensorState
{
	char		sensor_id[ALERT_SENSOR_KEYLEN]; /* hash key */
	char	   *location;		/* last known, engine context */
	uint64		rules_gen;		/* rules generation the states were built for */
	uint64		firing_gen;		/* firing-set generation they were synced with */
	TimestampTz last_ts[3];		/* per metric: newest reading evaluated */
	int			nstates;
	RuleState  *states;			/* the rules in scope, in rules[] order */
	int32	   *ridx;			/* their rules[] index: the hot loop reads only this */
	uint64	   *active;			/* bit per state: firing, pending or queued */
	int			nfeats;
	FeatState  *feats;			/* the features of the rules in scope only */
	int32	   *featidx;		/* their index into the rule set's features[] */
} SensorState;

/* the enabled rules of one load and the features they need */
typedef struct AlertRuleSet
{
	AlertRule  *rules;
	int			nrules;
	Feature    *features;
	int			nfeatures;
	double	   *feat_value;		/* scratch of the reading at hand, per feature */
	bool	   *feat_ok;
	FeatExplain *feat_explain;
} AlertRuleSet;

/*
 * A decision of the evaluation: the rule fires (fire) or resolves for the
 * sensor.  st is already updated (firing or not, no streak pending); the
 * callee queues the event and may set st->queued.
 */
typedef void (*AlertEmit) (const AlertRule *r, SensorState *se, RuleState *st, bool fire,
						   bool value_null, double value, bool reading_null, double reading,
						   TimestampTz ts, const FeatExplain *explain);

/* what the state of a rule depends on: rules with the same sig share it */
extern uint32 iotpipe_alert_rule_sig(const AlertRule *r, int window_size);

/* whether a feature keeps a RobustModel (alert_cache.c allocates it) */
static inline bool
iotpipe_alert_feature_has_model(const Feature *f)
{
	return f->kind == FK_ROBUST || f->kind == FK_DRIFT;
}

/*
 * Fill features[] (room for nrules) with the features the rules need, each
 * once, and point each rule's feature at its own; returns how many.
 */
extern int	iotpipe_alert_plan_features(AlertRule *rules, int nrules, Feature *features);

/*
 * Evaluate one reading of the sensor against the rules in its scope: update
 * its features, breach streaks and firing flags, and emit each fire and
 * resolve, in order.  se must be built for rs (alert_cache.c).  Allocates
 * nothing.
 */
extern void iotpipe_alert_evaluate(const AlertRuleSet *rs, SensorState *se,
								   const IotReading *rd, AlertEmit emit);

#endif							/* IOTPIPE_ALERT_EVAL_H */
