/*-------------------------------------------------------------------------
 *
 * alert_eval.c
 *	  Evaluation of the alert rules, in plain C over the structs of
 *	  alert_eval.h: no SPI, no catalog, no allocation.
 *
 *	  For one reading of one sensor, iotpipe_alert_evaluate()
 *	    - ignores the metrics whose reading is older than (or as old as)
 *	      the newest one evaluated for the sensor, so late data never
 *	      flips an alert backwards;
 *	    - updates the sensor's features once per reading, however many
 *	      rules share them: the value, a rate per minute smoothed with an
 *	      EWMA over time, an anomaly z-score against an EWMA mean and
 *	      variance of the sensor's own recent values;
 *	    - walks the rules in the sensor's scope: a rule breaches when its
 *	      feature is beyond threshold (op), fires when breaches have held
 *	      continuously (event time) for for_duration, resolves when a value
 *	      is back on the safe side of clear_threshold (hysteresis); any
 *	      reading resolves an offline alert;
 *	    - hands each fire and resolve to the caller's AlertEmit, in order
 *	      (alert_write.c queues it for the batch's write).
 *
 *	  The rules and the sensor states come from alert_cache.c; offline
 *	  fires come from SQL (alert_timer.c).  Reference: docs/alerts.md.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alert_eval.h"

#include <math.h>

#define ANOMALY_MIN_STDDEV	0.001

const char *const iotpipe_alert_kind_names[] = {"threshold", "rate", "offline", "anomaly"};
const char *const iotpipe_alert_metric_names[] = {NULL, "temperature", "humidity"};

uint32
iotpipe_alert_rule_sig(const AlertRule *r, int window_size)
{
	uint32		sig;

	sig = (uint32) r->kind * 1000003u + (uint32) r->metric * 7919u + (uint32) window_size;
	if (r->kind == RK_RATE)
		sig = sig * 31u + (uint32) (r->rate_tau_us / 1000);
	return sig;
}

int
iotpipe_alert_plan_features(AlertRule *rules, int nrules, Feature *features)
{
	int			nfeatures = 0;
	int			i;

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
	return nfeatures;
}

/* update the sensor's features with one reading of a metric */
static void
update_features(const AlertRuleSet *rs, SensorState *se, RuleMetric metric, double x,
				TimestampTz ts)
{
	double	   *feat_value = rs->feat_value;
	bool	   *feat_ok = rs->feat_ok;
	int			k;

	/*
	 * Ingest accepts only bounded values (jsonmsg.h), with which nothing
	 * below can overflow.  Should anything else get here, it is not
	 * evaluated, and a statistic that stopped being finite starts over
	 * rather than staying infinite (or NaN) forever.
	 */
	if (!isfinite(x))
		return;
	for (k = 0; k < se->nfeats; k++)
	{
		FeatState  *fs = &se->feats[k];
		int			f = se->featidx[k];

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
					if (!isfinite(fs->mean))
					{
						fs->mean = 0;
						break;
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
					if (!isfinite(fs->mean) || !isfinite(fs->var))
					{
						/* poisoned: start over from this value */
						fs->mean = x;
						fs->var = 0;
						fs->n = 0;
						feat_ok[f] = false;
					}
					else if (!isfinite(feat_value[f]))
						feat_ok[f] = false;
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

static inline void
fire(const AlertRule *r, SensorState *se, RuleState *st, double value, double reading,
	 TimestampTz ts, AlertEmit emit)
{
	st->firing = true;
	st->pending_since = DT_NOBEGIN;
	emit(r, se, st, true, false, value, false, reading, ts);
}

static inline void
resolve(const AlertRule *r, SensorState *se, RuleState *st, bool value_null, double value,
		bool reading_null, double reading, TimestampTz ts, AlertEmit emit)
{
	st->firing = false;
	st->pending_since = DT_NOBEGIN;
	emit(r, se, st, false, value_null, value, reading_null, reading, ts);
}

void
iotpipe_alert_evaluate(const AlertRuleSet *rs, SensorState *se, const IotReading *rd,
					   AlertEmit emit)
{
	const AlertRule *rules = rs->rules;
	const double *feat_value = rs->feat_value;
	const bool *feat_ok = rs->feat_ok;
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
	for (i = 0; i < se->nfeats; i++)
		rs->feat_ok[se->featidx[i]] = false;
	if (mok[RM_TEMPERATURE])
	{
		se->last_ts[RM_TEMPERATURE] = rd->ts;
		update_features(rs, se, RM_TEMPERATURE, rd->temperature, rd->ts);
	}
	if (mok[RM_HUMIDITY])
	{
		se->last_ts[RM_HUMIDITY] = rd->ts;
		update_features(rs, se, RM_HUMIDITY, rd->humidity, rd->ts);
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
				resolve(r, se, &se->states[i], true, 0, true, 0, rd->ts, emit);
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
				resolve(r, se, st, false, v, false, mval[r->metric], rd->ts, emit);
		}
		else if (!breaches(r, v))
			st->pending_since = DT_NOBEGIN;
		else
		{
			if (st->pending_since == DT_NOBEGIN)
				st->pending_since = rd->ts;
			if (rd->ts - st->pending_since >= r->for_us)
				fire(r, se, st, v, mval[r->metric], rd->ts, emit);
		}
		if (st->firing || st->pending_since != DT_NOBEGIN || st->queued)
			se->active[i / 64] |= UINT64CONST(1) << (i % 64);
		else
			se->active[i / 64] &= ~(UINT64CONST(1) << (i % 64));
	}
}
