/*-------------------------------------------------------------------------
 *
 * etl_collect.h
 *	  The warehouse ETL's readings in memory: the per-backend state, filed
 *	  by sensor, and the receiver that fills it (etl_collect.c).
 *
 *	  The ETL's C work is three modules: etl_collect.c reads the candidate
 *	  readings (and, incremental, the facts and hours already loaded around
 *	  them) into this state; etl_transform.c computes over it; etl_write.c
 *	  drives iotpipe._etl_emit() and writes the warehouse rows through the
 *	  bulk writer (bulkwrite.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ETL_COLLECT_H
#define IOTPIPE_ETL_COLLECT_H

#include "iotpipe.h"

#include "fmgr.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#define FACT_NATTS		12
#define HOURLY_NATTS	20
#define DAYS_NATTS		3

/* EtlRow.flags */
#define ROW_TEMP_NULL	0x01
#define ROW_HUM_NULL	0x02
#define ROW_FACT		0x04	/* a fact already in fact_reading */
#define ROW_F_OUTLIER	0x08	/* its stored flags */
#define ROW_F_STUCK		0x10

/* one raw reading, or one loaded fact (48 bytes) */
typedef struct EtlRow
{
	TimestampTz ts;
	float8		temp;
	float8		hum;
	uint64		xid;			/* ingest_xid */
	uint64		ord;			/* ctid of the raw row; 0 for a fact */
	int32		copies;
	uint8		flags;
} EtlRow;

typedef struct EtlLoc
{
	char	   *loc;			/* NULL: no location reported */
	int			len;
	int64		n;
	TimestampTz min_ts;
	TimestampTz max_ts;
} EtlLoc;

typedef struct EtlVersion
{
	int32		key;
	int32		loc_key;
	TimestampTz from;
	TimestampTz to;
} EtlVersion;

typedef struct EtlSensor
{
	char	   *id;
	int			idlen;
	uint32		hash;
	EtlRow	   *rows;
	int64		nrows;
	int64		cap;
	EtlLoc	   *locs;
	int			nlocs;
	int			loccap;
	int			lastloc;
	EtlVersion *vers;
	int			nvers;
} EtlSensor;

typedef struct EtlState
{
	MemoryContext cxt;
	EtlSensor  *sensors;
	int			nsensors;
	int			cap;
	int		   *slots;			/* open addressing: index + 1, 0 = empty */
	int			nslots;			/* power of two */
	int64		nrows;
	HTAB	   *old_hours;		/* incremental: EtlOldHour by (key, start) */
} EtlState;

/* an hourly row already in fact_sensor_hourly (every column is by value) */
typedef struct EtlHourKey
{
	int32		key;
	TimestampTz start;
} EtlHourKey;

typedef struct EtlOldHour
{
	EtlHourKey	k;
	Datum		vals[HOURLY_NATTS];
	bool		nulls[HOURLY_NATTS];
} EtlOldHour;

typedef struct EtlKeyEntry
{
	int32		key;
	EtlSensor  *sensor;
} EtlKeyEntry;

/* what a query run into the state (etl_collect_query) returns */
typedef enum EtlRecvMode
{
	RECV_CAND,					/* raw candidate readings */
	RECV_FACTS,					/* loaded facts around the touched hours */
	RECV_HOURS					/* loaded hourly rows around them */
} EtlRecvMode;

/*
 * iotpipe._etl_collect(cand text, lo bigint, snap pg_snapshot,
 *                      prev pg_snapshot, until timestamptz)
 *   RETURNS TABLE (sensor_id text, location text, n bigint,
 *                  min_ts timestamptz, max_ts timestamptz)
 * Runs cand (RECV_CAND below) into a new state of this transaction.
 */
extern Datum iotpipe_etl_collect(PG_FUNCTION_ARGS);

/*
 * The state of the current transaction: a new one (create; an older one of
 * this transaction is dropped), or the one made by iotpipe._etl_collect()
 * earlier in this transaction (an error when there is none).
 */
extern EtlState *etl_state_get(bool create);
/* drop the state of the current transaction, if any */
extern void etl_state_free(void);

/* the sensor with this id, added (no rows, no versions) when new */
extern EtlSensor *etl_sensor(EtlState *st, const char *id, int len);

/*
 * Run sql (in an SPI connection) into st, each row filed by mode:
 *	 RECV_CAND	(sensor_id text, ts timestamptz, temperature float8,
 *				 humidity float8, location text, ingest_xid xid8, ctid tid)
 *	 RECV_FACTS (sensor_key int, ts, temperature, humidity, ingest_xid,
 *				 copies int, is_outlier bool, is_stuck bool): bykey maps
 *				 sensor_key to the sensor (EtlKeyEntry)
 *	 RECV_HOURS all of fact_sensor_hourly's columns, into st->old_hours
 * The plan is made for this one run (the candidate query is the caller's).
 */
extern void etl_collect_query(EtlState *st, EtlRecvMode mode, HTAB *bykey,
							  const char *sql, int nargs, Oid *types, Datum *values,
							  bool *nulls);

#endif							/* IOTPIPE_ETL_COLLECT_H */
