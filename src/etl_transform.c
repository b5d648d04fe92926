/*-------------------------------------------------------------------------
 *
 * etl_transform.c
 *	  The warehouse ETL's computation, pure and in memory: what
 *	  iotpipe._etl_emit() (etl_write.c) does to the readings etl_collect.c
 *	  collected, before it writes them.
 *
 *	  Each sensor's readings (with, on an incremental run, the facts
 *	  already loaded in the hours around the touched ones) are sorted by
 *	  (ts, ingest_xid, ctid); then per sensor version, in one ordered walk:
 *	  dedup (first ingested wins, copies add up), the hourly statistics
 *	  (the same float8 accumulation as avg() and stddev_samp()), the
 *	  outlier flag (leave-one-out against the hour and its neighbours) and
 *	  the stuck flag (five identical readings within an hour).  Which hours
 *	  a run writes: all on a full load; on an incremental run those holding
 *	  a new reading and their neighbours (whose flags depend on them).
 *
 *	  The semantics are the warehouse contract in docs/warehouse.md.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "etl_transform.h"
#include "jsonmsg.h"

#include <math.h>
#include <stdlib.h>

#include "miscadmin.h"

static int
etl_row_cmp(const void *a, const void *b)
{
	const EtlRow *x = a;
	const EtlRow *y = b;

	if (x->ts != y->ts)
		return x->ts < y->ts ? -1 : 1;
	if (x->xid != y->xid)
		return x->xid < y->xid ? -1 : 1;
	if (x->ord != y->ord)
		return x->ord < y->ord ? -1 : 1;
	return 0;
}

/* float8_accum(), as avg() and stddev_samp() compute */
static inline void
etl_accum(double *s, double x)
{
	double		n = s[0] + 1.0;
	double		sx = s[1] + x;

	if (s[0] > 0.0)
	{
		double		tmp = x * n - sx;

		s[2] += tmp * tmp / (n * s[0]);
	}
	else
		s[2] = 0.0;
	s[0] = n;
	s[1] = sx;
}

/*
 * Leave-one-out outlier test: x against the mean and standard deviation of
 * the other readings of its hour and the two neighbouring hours, from their
 * count n, sum s and sum of squares q (x included).  Needs 5 other readings;
 * the deviation must exceed 4 standard deviations, with a floor of 0.1 on
 * the standard deviation (flat lines).  docs/warehouse.md, "is_outlier".
 */
static inline bool
etl_outlier(double x, const double *s3)
{
	double		n = s3[0];
	double		s = s3[1];
	double		q = s3[2];
	double		mean,
				var;

	if (n < 6)
		return false;
	mean = (s - x) / (n - 1);
	var = (q - x * x - (s - x) * (s - x) / (n - 1)) / (n - 2);
	if (var < 0)
		var = 0;
	return fabs(x - mean) > 4 * Max(sqrt(var), 0.1);
}

/*
 * float8 order as PostgreSQL defines it (float8_cmp_internal): NaN equals
 * NaN and sorts above every other value.  The contract rejects NaN and
 * infinities, but rows inserted into iotpipe.readings by hand may hold them.
 */
static inline int
etl_fcmp(double a, double b)
{
	if (unlikely(isnan(a) || isnan(b)))
		return isnan(a) ? (isnan(b) ? 0 : 1) : -1;
	return (a > b) - (a < b);
}

/*
 * A value no sensor can report: not finite, or outside the bounds ingest
 * enforces (jsonmsg.h).  Ingest never accepts one, but iotpipe.readings
 * takes whatever a DBA inserts by hand (1e300, NaN, Infinity): such a value
 * stays in fact_reading, flagged as an outlier, and is left out of the
 * hourly statistics, so that no sum or square can overflow (the daily
 * roll-up squares the hourly means in SQL) and one absurd row cannot make
 * a run fail or an hour's statistics meaningless.  README.md, "Value bounds".
 */
static inline bool
etl_implausible(double x, bool temperature)
{
	if (!isfinite(x))
		return true;
	if (temperature)
		return x < IOTPIPE_TEMPERATURE_MIN || x > IOTPIPE_TEMPERATURE_MAX;
	return x < IOTPIPE_HUMIDITY_MIN || x > IOTPIPE_HUMIDITY_MAX;
}

/* one value of a measure into an hour: min, max and the accumulator */
static inline void
etl_measure(double *acc, double *min, double *max, double x)
{
	if (acc[0] == 0 || etl_fcmp(x, *min) < 0)
		*min = x;
	if (acc[0] == 0 || etl_fcmp(x, *max) > 0)
		*max = x;
	etl_accum(acc, x);
}

bool
etl_same_values(const EtlRow *a, const EtlRow *b)
{
	if ((a->flags & ROW_TEMP_NULL) != (b->flags & ROW_TEMP_NULL) ||
		(a->flags & ROW_HUM_NULL) != (b->flags & ROW_HUM_NULL))
		return false;
	if (!(a->flags & ROW_TEMP_NULL) && etl_fcmp(a->temp, b->temp) != 0)
		return false;
	if (!(a->flags & ROW_HUM_NULL) && etl_fcmp(a->hum, b->hum) != 0)
		return false;
	return true;
}

void
etl_segment_init(EtlSegment *seg, bool full)
{
	memset(seg, 0, sizeof(*seg));
	seg->full = full;
	seg->fcap = 1024;
	seg->f = palloc(sizeof(EtlFact) * seg->fcap);
	seg->hcap = 1024;
	seg->h = palloc(sizeof(EtlHour) * seg->hcap);
}

void
etl_sort_rows(EtlState *st)
{
	for (int i = 0; i < st->nsensors; i++)
	{
		EtlSensor  *s = &st->sensors[i];

		CHECK_FOR_INTERRUPTS();
		qsort(s->rows, s->nrows, sizeof(EtlRow), etl_row_cmp);
	}
}

/* one sensor version: rows[lo, hi) sorted by (ts, xid, ord) */
void
etl_transform_segment(EtlSegment *seg, const EtlRow *rows, int64 lo, int64 hi)
{
	int64		nf = 0,
				nh = 0;
	EtlFact    *f;
	EtlHour    *h;

	if (hi - lo > seg->fcap)
	{
		seg->fcap = Max(hi - lo, seg->fcap * 2);
		seg->f = repalloc_huge(seg->f, sizeof(EtlFact) * seg->fcap);
	}
	f = seg->f;
	h = seg->h;

	/* dedup: the first in sort order wins, copies add up; and the hours */
	for (int64 i = lo; i < hi; i++)
	{
		const EtlRow *r = &rows[i];

		if (nf > 0 && rows[f[nf - 1].row].ts == r->ts)
		{
			EtlFact    *cur = &f[nf - 1];

			cur->copies += r->copies;
			if (r->flags & ROW_FACT)
				cur->ctx = i;
			else
				h[cur->hour].touched = true;
			continue;
		}
		else
		{
			TimestampTz hs = etl_hour_of(r->ts);
			EtlFact    *cur = &f[nf];

			if (nh == 0 || h[nh - 1].start != hs)
			{
				EtlHour    *nhour;

				/* hours are far fewer than readings: grow as they come */
				if (nh == seg->hcap)
				{
					seg->hcap *= 2;
					seg->h = repalloc_huge(seg->h, sizeof(EtlHour) * seg->hcap);
					h = seg->h;
				}
				nhour = &h[nh++];

				memset(nhour, 0, sizeof(EtlHour));
				nhour->start = hs;
				nhour->first = nf;
			}
			cur->row = i;
			cur->ctx = (r->flags & ROW_FACT) ? i : -1;
			cur->copies = r->copies;
			cur->hour = nh - 1;
			cur->outlier = cur->stuck = false;
			if (!(r->flags & ROW_FACT))
				h[nh - 1].touched = true;
			h[nh - 1].n++;
			nf++;
		}
	}

	/* hourly statistics of the deduplicated readings */
	for (int64 j = 0; j < nh; j++)
	{
		EtlHour    *hr = &h[j];

		for (int64 k = hr->first; k < hr->first + hr->n; k++)
		{
			const EtlRow *r = &rows[f[k].row];

			if (!(r->flags & ROW_TEMP_NULL) && !etl_implausible(r->temp, true))
				etl_measure(hr->t, &hr->tmin, &hr->tmax, r->temp);
			if (!(r->flags & ROW_HUM_NULL) && !etl_implausible(r->hum, false))
				etl_measure(hr->h, &hr->hmin, &hr->hmax, r->hum);
		}
	}

	/* n, sum and sum of squares over the hour and its neighbours */
	for (int64 j = 0; j < nh; j++)
	{
		memset(h[j].t3, 0, sizeof(h[j].t3));
		memset(h[j].h3, 0, sizeof(h[j].h3));
		for (int64 o = j - 1; o <= j + 1; o++)
		{
			if (o < 0 || o >= nh || llabs(h[o].start - h[j].start) > USECS_PER_HOUR)
				continue;
			h[j].t3[0] += h[o].t[0];
			h[j].t3[1] += h[o].t[1];
			h[j].t3[2] += h[o].t[2] + (h[o].t[0] > 0 ? h[o].t[1] * h[o].t[1] / h[o].t[0] : 0);
			h[j].h3[0] += h[o].h[0];
			h[j].h3[1] += h[o].h[1];
			h[j].h3[2] += h[o].h[2] + (h[o].h[0] > 0 ? h[o].h[1] * h[o].h[1] / h[o].h[0] : 0);
		}
	}

	/* flags, and which hours this run writes */
	for (int64 j = 0; j < nh; j++)
	{
		h[j].out = seg->full || h[j].touched ||
			(j > 0 && h[j - 1].touched && h[j].start - h[j - 1].start == USECS_PER_HOUR) ||
			(j + 1 < nh && h[j + 1].touched && h[j + 1].start - h[j].start == USECS_PER_HOUR);
	}
	for (int64 k = 0; k < nf; k++)
	{
		EtlFact    *cur = &f[k];
		const EtlRow *r = &rows[cur->row];
		EtlHour    *hr = &h[cur->hour];

		if (!hr->out)
			continue;
		cur->outlier = (!(r->flags & ROW_TEMP_NULL) &&
						(etl_implausible(r->temp, true) || etl_outlier(r->temp, hr->t3))) ||
			(!(r->flags & ROW_HUM_NULL) &&
			 (etl_implausible(r->hum, false) || etl_outlier(r->hum, hr->h3)));
		if (k >= 4 && rows[f[k - 4].row].ts >= r->ts - USECS_PER_HOUR)
		{
			cur->stuck = true;
			for (int b = 1; b <= 4 && cur->stuck; b++)
				cur->stuck = etl_same_values(r, &rows[f[k - b].row]);
		}
		if (cur->outlier || cur->stuck)
			hr->anomalies++;
		if (cur->outlier)
			hr->outliers++;
		if (cur->stuck)
			hr->stuck++;
		if (cur->copies > 1)
			hr->duplicates++;
	}
	seg->nf = nf;
	seg->nh = nh;
}
