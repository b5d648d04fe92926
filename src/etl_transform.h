/*-------------------------------------------------------------------------
 *
 * etl_transform.h
 *	  The warehouse ETL's computation over the collected readings: sort,
 *	  dedup, hourly statistics, outlier and stuck flags, the SCD2 version of
 *	  a reading (etl_transform.c).  No SQL.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ETL_TRANSFORM_H
#define IOTPIPE_ETL_TRANSFORM_H

#include "etl_collect.h"

#include "utils/datetime.h"

/* one deduplicated reading of a sensor version */
typedef struct EtlFact
{
	int64		row;			/* the winner */
	int64		ctx;			/* the loaded fact with this ts, or -1 */
	int32		copies;
	int32		hour;
	bool		outlier;
	bool		stuck;
} EtlFact;

/* one sensor version and hour */
typedef struct EtlHour
{
	TimestampTz start;
	int64		first;			/* index of its first fact */
	int64		n;
	double		t[3];			/* float8_accum state: N, Sx, Sxx */
	double		h[3];
	double		tmin,
				tmax,
				hmin,
				hmax;
	double		t3[3];			/* n, sum, sum of squares over hour +-1 */
	double		h3[3];
	int32		outliers,
				stuck,
				anomalies,
				duplicates;
	bool		touched;		/* holds a new reading */
	bool		out;			/* written by this run */
} EtlHour;

/*
 * The working arrays of one sensor version (a segment of its rows), reused
 * from one segment to the next: its facts in time order, its hours.
 */
typedef struct EtlSegment
{
	bool		full;			/* a full load: every hour is written */
	EtlFact    *f;
	int64		nf;
	int64		fcap;
	EtlHour    *h;
	int64		nh;
	int64		hcap;
} EtlSegment;

/* empty arrays in the current memory context */
extern void etl_segment_init(EtlSegment *seg, bool full);

/* sort every sensor's rows by (ts, ingest_xid, ctid; 0 for a loaded fact) */
extern void etl_sort_rows(EtlState *st);

/*
 * One sensor version: rows[lo, hi), sorted.  Fills seg->f and seg->h:
 * dedup (the first in sort order wins, copies add up), the hourly
 * statistics of the deduplicated readings, which hours this run writes
 * (EtlHour.out) and, in those, the flags of every fact and their counts.
 */
extern void etl_transform_segment(EtlSegment *seg, const EtlRow *rows, int64 lo, int64 hi);

/* the same measures, NULLs and NaN as PostgreSQL compares them */
extern bool etl_same_values(const EtlRow *a, const EtlRow *b);

/* the start of the hour of ts */
static inline TimestampTz
etl_hour_of(TimestampTz ts)
{
	TimestampTz r = ts % USECS_PER_HOUR;

	if (r < 0)
		r += USECS_PER_HOUR;
	return ts - r;
}

/* the version of s valid at ts, searching forward from *v */
static inline int
etl_version_at(const EtlSensor *s, int v, TimestampTz ts)
{
	while (v < s->nvers && ts >= s->vers[v].to)
		v++;
	if (v >= s->nvers || ts < s->vers[v].from)
		elog(ERROR, "iotpipe etl: no dim_sensor version of \"%s\" covers %s",
			 s->id, timestamptz_to_str(ts));
	return v;
}

/* yyyymmdd and the UTC hour/minute of a timestamp */
static inline void
etl_date_parts(TimestampTz ts, int32 *date_key, int *minute_of_day)
{
	int64		days = ts / USECS_PER_DAY;
	int64		rem = ts % USECS_PER_DAY;
	int			y,
				m,
				d;

	if (rem < 0)
	{
		rem += USECS_PER_DAY;
		days--;
	}
	j2date((int) (days + POSTGRES_EPOCH_JDATE), &y, &m, &d);
	*date_key = y * 10000 + m * 100 + d;
	*minute_of_day = (int) (rem / USECS_PER_MINUTE);
}

#endif							/* IOTPIPE_ETL_TRANSFORM_H */
