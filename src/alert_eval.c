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
 *	      variance of the sensor's own recent values (statistic zscore),
 *	      and on a robust baseline (a flat or an hour-of-day EWMA level
 *	      with an EWMA absolute deviation as its scale, RobustModel) the
 *	      robust anomaly score (how unusual the recent z are for the
 *	      sensor) and the drift CUSUMs of its residual;
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

const char *const iotpipe_alert_kind_names[] = {"threshold", "rate", "offline", "anomaly", "drift"};
const char *const iotpipe_alert_metric_names[] = {NULL, "temperature", "humidity"};

uint32
iotpipe_alert_rule_sig(const AlertRule *r, int window_size)
{
	uint32		sig;

	sig = (uint32) r->kind * 1000003u + (uint32) r->metric * 7919u + (uint32) window_size;
	if (r->kind == RK_RATE)
		sig = sig * 31u + (uint32) (r->rate_tau_us / 1000);
	if (r->kind == RK_ANOMALY)
		sig = sig * 31u + (uint32) r->statistic;
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
		f.kind = r->kind == RK_THRESHOLD ? FK_VALUE : r->kind == RK_RATE ? FK_RATE :
			r->kind == RK_DRIFT ? FK_DRIFT :
			r->statistic == AS_ROBUST ? FK_ROBUST : FK_ANOMALY;
		if (f.kind == FK_RATE)
			f.param = r->rate_tau_us;
		else if (f.kind != FK_VALUE)
		{
			f.param = r->alpha;
			f.min_samples = r->min_samples;
			if (f.kind != FK_ANOMALY)
				f.warmup_us = r->warmup_us;
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

/* ---------- the robust baseline: robust anomaly and drift (docs/alerts.md) ---------- */

#define MAD_TO_SIGMA		1.2533	/* sqrt(pi / 2): E|x - mu| = sigma * sqrt(2 / pi) */
#define SCALE_FLOOR			0.001	/* times max(1, |level|): the least scale */
#define DAILY_MIN_DAYS		2.0		/* days of readings an hour needs before it is used */
#define DAILY_ALPHA_PER_DAY 0.25	/* an hour's EWMA weight of one day: a span of 7 days */
#define DAILY_BETTER		0.5		/* daily baseline used when its error is < half the flat one's */
#define ERR_ALPHA			0.002	/* span of that comparison: about 1000 readings */
#define ERR_CLIP			4.0		/* a residual counts at most 4 scales in it */
#define Z_CAP				10.0	/* z beyond this says nothing more */
#define Z_SMOOTH			0.3		/* EWMA weight of the newest z in the recent average */
#define Z_LONG_ALPHA		0.001	/* span of the long-run mean and variance of that average */
#define Z_SD_MIN			0.1
#define DRIFT_SCALE_ALPHA	0.002	/* span of the residual's scale for drift: about 1000 readings */
#define DRIFT_CAP			3.0		/* one reading moves a CUSUM by at most 3 scales */
#define DRIFT_K				0.5		/* allowance: a bias below half a scale never accumulates */
#define DRIFT_CUSUM_MAX		100.0	/* the CUSUMs saturate, so a drift that stops resolves */

static inline double
scale_floor(double level)
{
	return SCALE_FLOOR * Max(1.0, fabs(level));
}

/*
 * One reading into the baseline: returns the residual x - baseline and the
 * scale of the baseline chosen (flat or daily) before the reading, then
 * updates both baselines with it.
 */
static void
robust_observe(RobustModel *m, double x, TimestampTz ts, double alpha, double *resid,
			   double *scale, double *baseline)
{
	int			h;
	double		floor_ = scale_floor(m->mu);
	double		rflat = x - m->mu;
	double		sflat = Max(MAD_TO_SIGMA * m->mad, floor_);
	double		rday,
				sday;
	bool		day_known,
				use_day;
	double		w,
				a;

	if (m->n > 0 && ts == m->prev_ts)
	{
		/* this reading was observed already, for the other feature sharing the model */
		*resid = m->last_resid;
		*scale = m->last_scale;
		*baseline = m->last_baseline;
		return;
	}
	if (m->n > 0 && ts > m->prev_ts)
	{
		double		d = (double) (ts - m->prev_ts) / USECS_PER_SEC;

		m->dt = m->dt <= 0 ? d : m->dt + 0.05 * (d - m->dt);
	}
	if (m->n == 0)
		m->first_ts = ts;
	m->prev_ts = ts;
	/* hour of the day, UTC */
	h = (int) (((ts / USECS_PER_HOUR) % ALERT_DAY_BUCKETS + ALERT_DAY_BUCKETS) % ALERT_DAY_BUCKETS);
	rday = x - m->hmu[h];
	sday = Max(MAD_TO_SIGMA * m->hmad[h], floor_);
	day_known = m->hdays[h] >= DAILY_MIN_DAYS;
	use_day = day_known && m->nerr > 0 && m->err_daily < DAILY_BETTER * m->err_flat;
	if (use_day)
	{
		*resid = rday;
		*scale = sday;
		*baseline = m->hmu[h];
	}
	else
	{
		*resid = m->n > 0 ? rflat : 0;
		*scale = sflat;
		*baseline = m->n > 0 ? m->mu : x;
	}
	m->last_resid = *resid;
	m->last_scale = *scale;
	m->last_baseline = *baseline;
	/* which baseline explains the sensor better, anomalies clipped */
	if (m->n > 0 && day_known)
	{
		double		ef = Min(fabs(rflat), ERR_CLIP * sflat);
		double		ed = Min(fabs(rday), ERR_CLIP * sday);

		if (m->nerr == 0)
		{
			m->err_flat = ef;
			m->err_daily = ed;
		}
		else
		{
			m->err_flat += ERR_ALPHA * (ef - m->err_flat);
			m->err_daily += ERR_ALPHA * (ed - m->err_daily);
		}
		if (m->nerr < PG_INT32_MAX)
			m->nerr++;
	}
	/* the flat baseline: EWMA level and absolute deviation */
	if (m->n == 0)
	{
		m->mu = x;
		m->mad = 0;
	}
	else
	{
		m->mad += alpha * (fabs(rflat) - m->mad);
		m->mu += alpha * rflat;
	}
	if (m->n < PG_INT32_MAX)
		m->n++;
	/* the hour's: each reading weighs the time it covers, so a day weighs the same at any rate */
	w = Min(m->dt > 0 ? m->dt : 3600.0, 3600.0) / 3600.0;
	if (m->hdays[h] <= 0)
	{
		m->hmu[h] = x;
		m->hmad[h] = m->n > 1 ? fabs(rflat) : 0;
		m->hdays[h] = w;
	}
	else
	{
		m->hdays[h] += w;
		a = Min(1.0, Max(w / m->hdays[h], DAILY_ALPHA_PER_DAY * w));
		m->hmad[h] += a * (fabs(rday) - m->hmad[h]);
		m->hmu[h] += a * rday;
	}
}

/* whether the model is past its warm-up: min_samples readings and warmup of event time */
static inline bool
robust_warm(const RobustModel *m, const Feature *def, TimestampTz ts)
{
	return m->n > def->min_samples && ts - m->first_ts >= def->warmup_us;
}

static void
robust_reset(RobustModel *m)
{
	memset(m, 0, sizeof(*m));
}

/* robust anomaly: how unusual the recent z-scores are for this sensor */
static bool
robust_anomaly(RobustModel *m, const Feature *def, double x, TimestampTz ts, double *value,
			   FeatExplain *ex)
{
	double		resid,
				scale,
				base,
				z,
				sd;

	robust_observe(m, x, ts, def->param, &resid, &scale, &base);
	z = Min(fabs(resid) / scale, Z_CAP);
	m->zs = m->n > 1 ? m->zs + Z_SMOOTH * (z - m->zs) : z;
	sd = m->nz > 1 ? sqrt(m->zvar) : 1.0;
	*value = (m->zs - m->zmean) / Max(sd, Z_SD_MIN);
	if (m->n <= def->min_samples)
	{
		/* the z of a baseline still forming would inflate what is usual */
	}
	else if (m->nz == 0)
	{
		m->zmean = m->zs;
		m->zvar = 0;
		m->nz = 1;
	}
	else
	{
		double		d = m->zs - m->zmean;
		double		a = Max(Z_LONG_ALPHA, 1.0 / (m->nz + 1));

		m->zmean += a * d;
		m->zvar = (1.0 - a) * (m->zvar + a * d * d);
		if (m->nz < PG_INT32_MAX)
			m->nz++;
	}
	ex->baseline = base;
	ex->scale = scale;
	ex->score = resid / scale;
	return robust_warm(m, def, ts);
}

/* drift: two one-sided CUSUMs of the residual, in scales */
static bool
robust_drift(RobustModel *m, const Feature *def, double x, TimestampTz ts, double *value,
			 FeatExplain *ex)
{
	double		resid,
				scale,
				base,
				sg,
				r;

	robust_observe(m, x, ts, def->param, &resid, &scale, &base);
	if (m->n <= 1)
		return false;			/* the first reading has no residual */
	if (m->nres == 0)
		m->rscale = fabs(resid);
	else
	{
		double		a = Max(1.0 / (m->nres + 1), DRIFT_SCALE_ALPHA);

		m->rscale += a * (Min(fabs(resid), ERR_CLIP * MAD_TO_SIGMA * m->rscale + 1e-9) - m->rscale);
	}
	if (m->nres < PG_INT32_MAX)
		m->nres++;
	sg = Max(MAD_TO_SIGMA * m->rscale, scale_floor(m->mu));
	r = Max(-DRIFT_CAP, Min(DRIFT_CAP, resid / sg));
	m->cusum_up = Min(DRIFT_CUSUM_MAX, Max(0.0, m->cusum_up + r - DRIFT_K));
	m->cusum_down = Min(DRIFT_CUSUM_MAX, Max(0.0, m->cusum_down - r - DRIFT_K));
	if (!robust_warm(m, def, ts))
	{
		/* what accumulated before the baseline was known says nothing */
		m->cusum_up = m->cusum_down = 0;
		return false;
	}
	*value = Max(m->cusum_up, m->cusum_down);
	ex->baseline = base;
	ex->scale = sg;
	ex->score = m->cusum_up >= m->cusum_down ? m->cusum_up : -m->cusum_down;
	return true;
}

/* update the sensor's features with one reading of a metric */
static void
update_features(const AlertRuleSet *rs, SensorState *se, RuleMetric metric, double x,
				TimestampTz ts)
{
	double	   *feat_value = rs->feat_value;
	bool	   *feat_ok = rs->feat_ok;
	FeatExplain *feat_explain = rs->feat_explain;
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
					feat_explain[f].baseline = fs->mean;
					feat_explain[f].scale = Max(sqrt(fs->var), ANOMALY_MIN_STDDEV);
					feat_explain[f].score = diff / feat_explain[f].scale;
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
			case FK_ROBUST:
			case FK_DRIFT:
				{
					RobustModel *m = fs->model;
					bool		ok;

					if (m == NULL)
						break;
					if (fs->def.kind == FK_ROBUST)
						ok = robust_anomaly(m, &fs->def, x, ts, &feat_value[f], &feat_explain[f]);
					else
						ok = robust_drift(m, &fs->def, x, ts, &feat_value[f], &feat_explain[f]);
					if (!isfinite(m->mu) || !isfinite(m->mad) || !isfinite(m->zs) ||
						!isfinite(m->zvar) || !isfinite(m->rscale))
					{
						/* poisoned: start over */
						robust_reset(m);
						ok = false;
					}
					feat_ok[f] = ok && isfinite(feat_value[f]);
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
	 TimestampTz ts, const FeatExplain *ex, AlertEmit emit)
{
	st->firing = true;
	st->pending_since = DT_NOBEGIN;
	emit(r, se, st, true, false, value, false, reading, ts, ex);
}

static inline void
resolve(const AlertRule *r, SensorState *se, RuleState *st, bool value_null, double value,
		bool reading_null, double reading, TimestampTz ts, const FeatExplain *ex,
		AlertEmit emit)
{
	st->firing = false;
	st->pending_since = DT_NOBEGIN;
	emit(r, se, st, false, value_null, value, reading_null, reading, ts, ex);
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
		const FeatExplain *ex;
		double		v;

		if (r->kind == RK_OFFLINE)
		{
			/* any reading ends an offline alert */
			if (active && se->states[i].firing)
				resolve(r, se, &se->states[i], true, 0, true, 0, rd->ts, NULL, emit);
			continue;
		}
		if (!feat_ok[r->feature])
			continue;
		v = feat_value[r->feature];
		if (!active && !breaches(r, v))
			continue;
		st = &se->states[i];
		ex = (r->kind == RK_ANOMALY || r->kind == RK_DRIFT) ? &rs->feat_explain[r->feature] : NULL;
		if (st->firing)
		{
			if (is_safe(r, v))
				resolve(r, se, st, false, v, false, mval[r->metric], rd->ts, ex, emit);
		}
		else if (!breaches(r, v))
			st->pending_since = DT_NOBEGIN;
		else
		{
			if (st->pending_since == DT_NOBEGIN)
				st->pending_since = rd->ts;
			if (rd->ts - st->pending_since >= r->for_us)
				fire(r, se, st, v, mval[r->metric], rd->ts, ex, emit);
		}
		if (st->firing || st->pending_since != DT_NOBEGIN || st->queued)
			se->active[i / 64] |= UINT64CONST(1) << (i % 64);
		else
			se->active[i / 64] &= ~(UINT64CONST(1) << (i % 64));
	}
}
