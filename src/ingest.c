/*-------------------------------------------------------------------------
 *
 * ingest.c
 *	  The ingest core, shared by every source (Kafka workers, the simulator,
 *	  iotpipe.ingest_json()):
 *
 *	    add messages -> parse/validate each (jsonmsg.c) -> flush:
 *	      1. make sure the daily partitions exist (partition.c)
 *	      2. write accepted readings straight into their partitions
 *	         (tuple routing, multi-insert, indexes, constraints, as COPY
 *	         does: the bulk writer, bulkwrite.c, shared with the ETL), or
 *	         with COPY FROM an in-memory binary stream when the
 *	         table has triggers or other things only COPY handles; in a
 *	         subtransaction, so that rows the database refuses (a DBA's
 *	         constraint or trigger) become dead letters (rowguard.c)
 *	      3. the batch's sensors, counts included (sensors.c): upserted
 *	         (ingest_json), or a delta a worker folds in later
 *	      4. run the alert engine over the accepted readings (alerts.c)
 *	      5. write rejects to iotpipe.dead_letters with their exact bytes
 *
 *	  Everything happens in the caller's transaction: a worker commits once
 *	  per batch (rows, dead letters, alerts, NOTIFY and Kafka offsets
 *	  together).  Bad input never throws; only real failures (disk, locks,
 *	  a dropped extension) do.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alerts.h"
#include "bulkwrite.h"
#include "guc.h"
#include "partition.h"
#include "rowguard.h"
#include "sensors.h"
#include "shmem.h"
#include "spiutil.h"
#include "version.h"
#include "ingest.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/trigger.h"
#include "access/heapam.h"
#include "access/tableam.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_relation.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

typedef struct IotReject
{
	char	   *data;
	size_t		len;
	const char *reason;
	const char *source;
	const char *topic;
	int			partition;
	int64		offset;
	bool		has_coords;
} IotReject;

/* where an accepted reading came from: kept until the batch is written */
typedef struct IotRaw
{
	size_t		off;			/* its bytes in IotBatch.raw */
	size_t		len;
	const char *source;
	const char *topic;			/* NULL: no Kafka coordinates */
	int			partition;
	int64		offset;
} IotRaw;

struct IotBatch
{
	MemoryContext cxt;			/* everything of one batch; reset per batch */
	IotReading *readings;
	IotRaw	   *raws;			/* one per reading: its message, for a dead letter */
	int			nreadings;
	int			readings_cap;
	char	   *raw;			/* the accepted messages' bytes, one after another */
	size_t		raw_len;
	size_t		raw_cap;
	const char *topic;			/* the last Kafka topic seen, copied */
	IotReject  *rejects;
	int			nrejects;
	int			rejects_cap;
	/* set by the flush, each time: rows held or refused by the database */
	IotReject  *db_rejects;
	int			ndb_rejects;
	IotReading *rows;			/* the readings to write: all, or those not held */
	int		   *rowidx;			/* rows[i] is readings[rowidx[i]]; NULL: the same */
	int			nrows;
	bool	   *refused;		/* per row, NULL when none was */
	TimestampTz now;			/* reference for "in the future" */
	const char *source;			/* of the readings, for those held */
};

static SPIPlanPtr dead_letters_plan = NULL;

IotBatch *
iotpipe_batch_create(MemoryContext parent)
{
	IotBatch   *batch = MemoryContextAllocZero(parent, sizeof(IotBatch));

	batch->cxt = AllocSetContextCreate(parent, "iotpipe batch", ALLOCSET_DEFAULT_SIZES);
	iotpipe_batch_reset(batch);
	return batch;
}

void
iotpipe_batch_reset(IotBatch *batch)
{
	MemoryContextReset(batch->cxt);
	batch->readings_cap = 1024;
	batch->readings = MemoryContextAlloc(batch->cxt, sizeof(IotReading) * batch->readings_cap);
	batch->raws = MemoryContextAlloc(batch->cxt, sizeof(IotRaw) * batch->readings_cap);
	batch->nreadings = 0;
	batch->raw_cap = 64 * 1024;
	batch->raw = MemoryContextAlloc(batch->cxt, batch->raw_cap);
	batch->raw_len = 0;
	batch->topic = NULL;
	batch->db_rejects = NULL;
	batch->rows = NULL;
	batch->rowidx = NULL;
	batch->nrows = 0;
	batch->ndb_rejects = 0;
	batch->refused = NULL;
	batch->rejects_cap = 16;
	batch->rejects = MemoryContextAlloc(batch->cxt, sizeof(IotReject) * batch->rejects_cap);
	batch->nrejects = 0;
	batch->now = GetCurrentTimestamp();
}

int
iotpipe_batch_count(IotBatch *batch)
{
	return batch->nreadings + batch->nrejects;
}

int
iotpipe_batch_nreadings(IotBatch *batch)
{
	return batch->nreadings;
}

IotReading *
iotpipe_batch_readings(IotBatch *batch)
{
	return batch->readings;
}

void
iotpipe_batch_reject(IotBatch *batch, const char *data, size_t len,
					 const IotSource *src, const char *reason)
{
	IotReject  *rej;
	MemoryContext old = MemoryContextSwitchTo(batch->cxt);

	if (batch->nrejects == batch->rejects_cap)
	{
		batch->rejects_cap *= 2;
		batch->rejects = repalloc(batch->rejects, sizeof(IotReject) * batch->rejects_cap);
	}
	rej = &batch->rejects[batch->nrejects++];
	rej->data = palloc(len + 1);
	if (len > 0)
		memcpy(rej->data, data, len);
	rej->len = len;
	rej->reason = pstrdup(reason);
	rej->source = src->source;
	rej->topic = src->topic ? pstrdup(src->topic) : NULL;
	rej->partition = src->partition;
	rej->offset = src->offset;
	rej->has_coords = (src->topic != NULL);
	MemoryContextSwitchTo(old);
}

bool
iotpipe_batch_add(IotBatch *batch, const char *data, size_t len, const IotSource *src)
{
	const char *reason;
	IotReading *r;
	MemoryContext old;

	if (batch->nreadings == batch->readings_cap)
	{
		batch->readings_cap *= 2;
		batch->readings = repalloc_huge(batch->readings, sizeof(IotReading) * batch->readings_cap);
		batch->raws = repalloc_huge(batch->raws, sizeof(IotRaw) * batch->readings_cap);
	}
	r = &batch->readings[batch->nreadings];
	old = MemoryContextSwitchTo(batch->cxt);
	reason = iotpipe_parse_message(data, len, r, batch->now, batch->cxt);
	MemoryContextSwitchTo(old);
	if (reason == NULL)
	{
		IotRaw	   *raw = &batch->raws[batch->nreadings++];

		/*
		 * The message's bytes, in case the database refuses the row (a
		 * constraint, a trigger): its dead letter keeps the exact payload.
		 */
		if (batch->raw_len + len > batch->raw_cap)
		{
			while (batch->raw_len + len > batch->raw_cap)
				batch->raw_cap *= 2;
			batch->raw = repalloc_huge(batch->raw, batch->raw_cap);
		}
		memcpy(batch->raw + batch->raw_len, data, len);
		raw->off = batch->raw_len;
		raw->len = len;
		batch->raw_len += len;
		raw->source = src->source;
		if (src->topic && (batch->topic == NULL || strcmp(batch->topic, src->topic) != 0))
			batch->topic = MemoryContextStrdup(batch->cxt, src->topic);
		raw->topic = src->topic ? batch->topic : NULL;
		raw->partition = src->partition;
		raw->offset = src->offset;
		return true;
	}
	iotpipe_batch_reject(batch, data, len, src, reason);
	return false;
}

/* ---------- COPY from memory ---------- */

static const char *copy_src_data;
static size_t copy_src_len;
static size_t copy_src_pos;

static int
copy_read_cb(void *outbuf, int minread, int maxread)
{
	size_t		n = Min((size_t) maxread, copy_src_len - copy_src_pos);

	memcpy(outbuf, copy_src_data + copy_src_pos, n);
	copy_src_pos += n;
	return (int) n;
}

static inline void
put_int16(StringInfo buf, int16 v)
{
	uint16		n = pg_hton16((uint16) v);

	appendBinaryStringInfoNT(buf, (char *) &n, 2);
}

static inline void
put_int32(StringInfo buf, int32 v)
{
	uint32		n = pg_hton32((uint32) v);

	appendBinaryStringInfoNT(buf, (char *) &n, 4);
}

static inline void
put_int64(StringInfo buf, int64 v)
{
	uint64		n = pg_hton64((uint64) v);

	appendBinaryStringInfoNT(buf, (char *) &n, 8);
}

static inline void
put_float8(StringInfo buf, double v)
{
	union
	{
		double		f;
		int64		i;
	}			u;

	u.f = v;
	put_int64(buf, u.i);
}

#define READINGS_NATTS 7

/* the PGCOPY binary stream of n accepted readings */
static void
build_copy_stream(const IotReading *rows, int n, StringInfo buf)
{
	static const char sig[11] = "PGCOPY\n\377\r\n\0";
	TimestampTz ingested_at = GetCurrentTimestamp();
	uint64		xid = U64FromFullTransactionId(GetTopFullTransactionId());
	int			i;

	enlargeStringInfo(buf, 19 + n * 120);
	appendBinaryStringInfoNT(buf, sig, 11);
	put_int32(buf, 0);			/* flags */
	put_int32(buf, 0);			/* header extension length */
	for (i = 0; i < n; i++)
	{
		const IotReading *r = &rows[i];

		enlargeStringInfo(buf, 2 + 7 * 4 + r->sensor_id_len + r->location_len + 40);
		put_int16(buf, READINGS_NATTS);
		put_int32(buf, r->sensor_id_len);
		appendBinaryStringInfoNT(buf, r->sensor_id, r->sensor_id_len);
		put_int32(buf, 8);
		put_int64(buf, r->ts);
		if (r->has_temperature)
		{
			put_int32(buf, 8);
			put_float8(buf, r->temperature);
		}
		else
			put_int32(buf, -1);
		if (r->has_humidity)
		{
			put_int32(buf, 8);
			put_float8(buf, r->humidity);
		}
		else
			put_int32(buf, -1);
		if (r->location)
		{
			put_int32(buf, r->location_len);
			appendBinaryStringInfoNT(buf, r->location, r->location_len);
		}
		else
			put_int32(buf, -1);
		put_int32(buf, 8);
		put_int64(buf, ingested_at);
		put_int32(buf, 8);
		put_int64(buf, (int64) xid);
	}
	put_int16(buf, -1);
}

static Oid
iotpipe_relid(const char *relname)
{
	Oid			nsp = get_namespace_oid("iotpipe", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(relname, nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"iotpipe.%s\" does not exist", relname),
				 errhint("Is the iotpipe extension installed in this database?")));
	return relid;
}


/*
 * The direct path: the rows go into their partitions with multi-inserts and
 * index insertion as COPY does it (routing by PostgreSQL's own partition
 * tuple routing, NOT NULL and CHECK constraints enforced: bulkwrite.c), but
 * without encoding every value into COPY's binary format and parsing it
 * back.  Only for the plain table iotpipe creates: with triggers, row
 * security, generated columns, foreign partitions or a partition whose
 * columns are laid out differently, returns false before writing anything,
 * and the caller uses COPY, which knows all of that.
 */
static inline void
direct_values(TupleTableSlot *slot, const IotReading *r, Datum sensor_id, Datum location,
			  TimestampTz ingested_at, FullTransactionId xid)
{
	Datum	   *v = slot->tts_values;
	bool	   *n = slot->tts_isnull;

	v[0] = sensor_id;
	n[0] = false;
	v[1] = TimestampTzGetDatum(r->ts);
	n[1] = false;
	v[2] = Float8GetDatum(r->has_temperature ? r->temperature : 0);
	n[2] = !r->has_temperature;
	v[3] = Float8GetDatum(r->has_humidity ? r->humidity : 0);
	n[3] = !r->has_humidity;
	v[4] = location;
	n[4] = (r->location == NULL);
	v[5] = TimestampTzGetDatum(ingested_at);
	n[5] = false;
	v[6] = FullTransactionIdGetDatum(xid);
	n[6] = false;
}

/* a text datum in buf (sized by the caller), 1-byte header when it fits */
static Datum
direct_text(char **buf, const char *data, int len)
{
	char	   *p = *buf;

	if (len + VARHDRSZ_SHORT <= VARATT_SHORT_MAX)
	{
		SET_VARSIZE_SHORT(p, len + VARHDRSZ_SHORT);
		memcpy(p + VARHDRSZ_SHORT, data, len);
		*buf = p + len + VARHDRSZ_SHORT;
	}
	else
	{
		p = (char *) INTALIGN(p);
		SET_VARSIZE(p, len + VARHDRSZ);
		memcpy(p + VARHDRSZ, data, len);
		*buf = p + len + VARHDRSZ;
	}
	return PointerGetDatum(p);
}

static bool
insert_readings_direct(const IotReading *rows, int n, Relation rel, List *rtable)
{
	static const Oid types[READINGS_NATTS] = {
		TEXTOID, TIMESTAMPTZOID, FLOAT8OID, FLOAT8OID, TEXTOID, TIMESTAMPTZOID, XID8OID
	};
	TupleDesc	desc = RelationGetDescr(rel);
	BulkWriter *w;
	TupleTableSlot *rootslot;
	BulkTarget **dest;
	Datum	   *ids,
			   *locs;
	char	   *text_buf;
	size_t		text_size = 0;
	bool		ok = true;
	TimestampTz ingested_at = GetCurrentTimestamp();
	FullTransactionId xid = GetTopFullTransactionId();

	/* the table as iotpipe made it (the bulk writer checks the rest) */
	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE || desc->natts != READINGS_NATTS)
		return false;
	for (int i = 0; i < READINGS_NATTS; i++)
		if (TupleDescAttr(desc, i)->attisdropped || TupleDescAttr(desc, i)->atttypid != types[i])
			return false;
	w = iotpipe_bulk_open_routed(rel, rtable);
	if (w == NULL)
		return false;

	/* the text values, in one buffer */
	for (int i = 0; i < n; i++)
		text_size += rows[i].sensor_id_len + rows[i].location_len + 2 * (VARHDRSZ + 3);
	text_buf = palloc(text_size + 8);
	ids = palloc(sizeof(Datum) * n);
	locs = palloc(sizeof(Datum) * n);
	{
		char	   *p = text_buf;

		for (int i = 0; i < n; i++)
		{
			const IotReading *r = &rows[i];

			ids[i] = direct_text(&p, r->sensor_id, r->sensor_id_len);
			locs[i] = r->location ? direct_text(&p, r->location, r->location_len) : (Datum) 0;
		}
	}

	/* route every row first: nothing is written unless all can go direct */
	rootslot = iotpipe_bulk_root_slot(w);
	dest = palloc(sizeof(BulkTarget *) * n);
	for (int i = 0; i < n; i++)
	{
		ExecClearTuple(rootslot);
		direct_values(rootslot, &rows[i], ids[i], locs[i], ingested_at, xid);
		ExecStoreVirtualTuple(rootslot);
		dest[i] = iotpipe_bulk_route(w, rootslot);
		if (dest[i] == NULL)
		{
			ok = false;
			break;
		}
	}

	if (ok)
	{
		for (int i = 0; i < n; i++)
		{
			TupleTableSlot *slot = iotpipe_bulk_slot(w, dest[i]);

			direct_values(slot, &rows[i], ids[i], locs[i], ingested_at, xid);
			iotpipe_bulk_store(w, dest[i], slot);
		}
	}
	iotpipe_bulk_close(w, !ok);
	return ok;
}

static void
copy_readings(const IotReading *rows, int n)
{
	static const char *const cols[READINGS_NATTS] = {
		"sensor_id", "ts", "temperature", "humidity", "location", "ingested_at", "ingest_xid"
	};
	StringInfoData buf;
	Relation	rel;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	CopyFromState cstate;
	List	   *attnames = NIL;
	int			i;
	int			saved_client_encoding = pg_get_client_encoding();
	bool		swap_encoding;

	rel = table_open(iotpipe_relid("readings"), RowExclusiveLock);
	pstate = make_parsestate(NULL);
	nsitem = addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
#if PG_VERSION_NUM >= 160000
	nsitem->p_perminfo->requiredPerms = ACL_INSERT;
	for (i = 0; i < READINGS_NATTS; i++)
		nsitem->p_perminfo->insertedCols =
			bms_add_member(nsitem->p_perminfo->insertedCols,
						   i + 1 - FirstLowInvalidHeapAttributeNumber);
	ExecCheckPermissions(pstate->p_rtable, list_make1(nsitem->p_perminfo), true);
#else
	nsitem->p_rte->requiredPerms = ACL_INSERT;
	for (i = 0; i < READINGS_NATTS; i++)
		nsitem->p_rte->insertedCols =
			bms_add_member(nsitem->p_rte->insertedCols,
						   i + 1 - FirstLowInvalidHeapAttributeNumber);
	ExecCheckRTPerms(pstate->p_rtable, true);
#endif
	/* the common case: straight into the partitions, without COPY's parse */
	if (insert_readings_direct(rows, n, rel, pstate->p_rtable))
	{
		free_parsestate(pstate);
		table_close(rel, NoLock);
		return;
	}

	for (i = 0; i < READINGS_NATTS; i++)
		attnames = lappend(attnames, makeString((char *) cols[i]));

	/*
	 * Binary COPY hands text fields to textrecv, which converts from the
	 * client encoding.  Our bytes are UTF-8 in a UTF-8 database: make sure no
	 * conversion happens whatever the session's client_encoding is.
	 */
	swap_encoding = (saved_client_encoding != GetDatabaseEncoding() &&
					 saved_client_encoding != PG_SQL_ASCII);

	initStringInfo(&buf);
	build_copy_stream(rows, n, &buf);

	copy_src_data = buf.data;
	copy_src_len = buf.len;
	copy_src_pos = 0;
	PG_TRY();
	{
		if (swap_encoding)
			SetClientEncoding(GetDatabaseEncoding());
		cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_read_cb, attnames,
							   list_make1(makeDefElem("format", (Node *) makeString("binary"), -1)));
		(void) CopyFrom(cstate);
		EndCopyFrom(cstate);
	}
	PG_FINALLY();
	{
		if (swap_encoding)
			SetClientEncoding(saved_client_encoding);
		copy_src_data = NULL;
		copy_src_len = copy_src_pos = 0;
	}
	PG_END_TRY();

	free_parsestate(pstate);
	table_close(rel, NoLock);
	pfree(buf.data);
}

/* ---------- dead letters ---------- */

/* the rejects of parsing and the rows the database refused, in one insert */
static void
write_dead_letters(IotBatch *batch)
{
	int			n = batch->nrejects + batch->ndb_rejects;
	Datum	   *sources = palloc(sizeof(Datum) * n);
	Datum	   *topics = palloc(sizeof(Datum) * n);
	Datum	   *parts = palloc(sizeof(Datum) * n);
	Datum	   *offsets = palloc(sizeof(Datum) * n);
	Datum	   *payloads = palloc(sizeof(Datum) * n);
	Datum	   *errors = palloc(sizeof(Datum) * n);
	bool	   *coordnulls = palloc(sizeof(bool) * n);
	Datum		args[6];
	int			i;
	int			ret;

	for (i = 0; i < n; i++)
	{
		IotReject  *rej = i < batch->nrejects ? &batch->rejects[i] :
			&batch->db_rejects[i - batch->nrejects];
		bytea	   *payload = palloc(VARHDRSZ + rej->len);

		SET_VARSIZE(payload, VARHDRSZ + rej->len);
		if (rej->len > 0)
			memcpy(VARDATA(payload), rej->data, rej->len);
		sources[i] = PointerGetDatum(cstring_to_text(rej->source));
		coordnulls[i] = !rej->has_coords;
		topics[i] = rej->has_coords ? PointerGetDatum(cstring_to_text(rej->topic)) : (Datum) 0;
		parts[i] = Int32GetDatum(rej->partition);
		offsets[i] = Int64GetDatum(rej->offset);
		payloads[i] = PointerGetDatum(payload);
		/* the reason is ASCII or valid UTF-8 built by us or the server */
		errors[i] = PointerGetDatum(cstring_to_text(rej->reason));
	}
	args[0] = iotpipe_text_array(sources, NULL, n);
	args[1] = iotpipe_text_array(topics, coordnulls, n);
	args[2] = iotpipe_byval_array(parts, coordnulls, n, INT4OID);
	args[3] = iotpipe_byval_array(offsets, coordnulls, n, INT8OID);
	args[4] = iotpipe_array(payloads, NULL, n, BYTEAOID);
	args[5] = iotpipe_text_array(errors, NULL, n);

	if (dead_letters_plan == NULL)
	{
		static const Oid types[6] = {TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID,
		BYTEAARRAYOID, TEXTARRAYOID};

		dead_letters_plan =
			iotpipe_keep_plan("INSERT INTO iotpipe.dead_letters "
							  "  (source, topic, partition, \"offset\", payload, error) "
							  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
							  "pg_catalog.unnest($3), pg_catalog.unnest($4), "
							  "pg_catalog.unnest($5), pg_catalog.unnest($6))",
							  6, types, 0);
	}
	ret = SPI_execute_plan(dead_letters_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "dead letters insert failed: %s", SPI_result_code_string(ret));
}

/* ---------- flush ---------- */

/*
 * A reading that has no partition and cannot get one now (partition.c:
 * the per-transaction cap, a lock wait that timed out) is held: it goes to
 * iotpipe.dead_letters with its exact message and a reason starting with
 * "held: ", and the launcher ingests it again (iotpipe_ingest_retry_held).
 * It is not lost and not written twice.
 *
 * Held and refused readings are per flush, not taken out of the batch: a
 * caller flushes the same batch again after a failed transaction.
 */
static void
set_aside(IotBatch *batch, int i, const char *reason)
{
	IotRaw	   *raw = &batch->raws[i];
	IotReject  *rej;

	if (batch->db_rejects == NULL)
		batch->db_rejects = palloc(sizeof(IotReject) * batch->nreadings);
	rej = &batch->db_rejects[batch->ndb_rejects++];
	rej->data = batch->raw + raw->off;
	rej->len = raw->len;
	rej->reason = reason;
	rej->source = raw->source;
	rej->topic = raw->topic;
	rej->partition = raw->partition;
	rej->offset = raw->offset;
	rej->has_coords = (raw->topic != NULL);
}

/*
 * Every reading needs a partition: made now, or the reading is held.  Sets
 * the flush's rows to write (batch->rows/rowidx/nrows): all the readings,
 * or a copy without the held ones.
 */
static void
ensure_partitions(IotBatch *batch)
{
	IotPartCheck *pc = iotpipe_partcheck_begin();

	batch->rows = batch->readings;
	batch->rowidx = NULL;
	batch->nrows = batch->nreadings;
	for (int i = 0; i < batch->nreadings; i++)
	{
		const char *reason = iotpipe_partcheck(pc, batch->readings[i].ts);

		if (reason != NULL)
		{
			if (batch->rowidx == NULL)
			{
				batch->rows = palloc(sizeof(IotReading) * batch->nreadings);
				batch->rowidx = palloc(sizeof(int) * batch->nreadings);
				memcpy(batch->rows, batch->readings, sizeof(IotReading) * i);
				for (int j = 0; j < i; j++)
					batch->rowidx[j] = j;
				batch->nrows = i;
			}
			set_aside(batch, i, reason);
		}
		else if (batch->rowidx != NULL)
		{
			batch->rows[batch->nrows] = batch->readings[i];
			batch->rowidx[batch->nrows++] = i;
		}
	}
	iotpipe_partcheck_end(pc);
}

/* rowguard.c's callbacks: write a range of the rows, set one aside */
static void
write_range(void *arg, int lo, int hi)
{
	IotBatch   *batch = arg;

	copy_readings(batch->rows + lo, hi - lo);
}

static void
refuse_row(void *arg, int i, const char *reason)
{
	IotBatch   *batch = arg;

	if (batch->refused == NULL)
		batch->refused = palloc0(sizeof(bool) * batch->nrows);
	batch->refused[i] = true;
	set_aside(batch, batch->rowidx ? batch->rowidx[i] : i, reason);
}

/*
 * Write the batch in the current transaction: the readings (those the
 * database refuses, by a constraint or a trigger, become dead letters with
 * the reason and their message: rowguard.c), the sensors and the alerts of
 * the readings that landed, the dead letters.  The batch itself is not
 * changed: a caller may flush it again after a failed transaction.
 */
void
iotpipe_batch_flush(IotBatch *batch, uint64 *accepted, uint64 *rejected)
{
	MemoryContext old = MemoryContextSwitchTo(batch->cxt);
	IotReading *landed = batch->readings;
	int			nlanded = batch->nreadings;

	batch->ndb_rejects = 0;
	batch->db_rejects = NULL;
	batch->refused = NULL;
	if (batch->nreadings > 0)
	{
		ensure_partitions(batch);
		landed = batch->rows;
		nlanded = batch->nrows;
	}
	if (nlanded > 0)
	{
		if (iotpipe_my_slot >= 0)
		{
			/*
			 * A worker's batch is a transaction of its own: a constraint a
			 * DBA made DEFERRABLE INITIALLY DEFERRED is checked with the
			 * write, where a refused row can be set aside, not at commit,
			 * where it would fail the batch every time (SET CONSTRAINTS ALL
			 * IMMEDIATE).  ingest_json leaves its caller's transaction as
			 * it is.
			 */
			ConstraintsSetStmt *immediate = makeNode(ConstraintsSetStmt);

			immediate->constraints = NIL;
			immediate->deferred = false;
			AfterTriggerSetState(immediate);
		}
		if (iotpipe_rowguard_write(batch->nrows, write_range, refuse_row, batch) > 0)
		{
			/* the readings that landed, in input order */
			landed = palloc(sizeof(IotReading) * batch->nrows);
			nlanded = 0;
			for (int i = 0; i < batch->nrows; i++)
				if (!batch->refused[i])
					landed[nlanded++] = batch->rows[i];
		}
	}
	if (batch->nreadings > 0 || batch->nrejects > 0)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (nlanded > 0)
		{
			/* an iotpipe worker's small, frequent batches: a delta, folded later */
			if (iotpipe_my_slot >= 0)
				iotpipe_sensors_defer(landed, nlanded);
			else
				iotpipe_sensors_upsert(landed, nlanded);
			iotpipe_alerts_process(landed, nlanded);
		}
		if (batch->nrejects + batch->ndb_rejects > 0)
			write_dead_letters(batch);
		SPI_finish();
	}
	MemoryContextSwitchTo(old);

	if (accepted)
		*accepted = nlanded;
	if (rejected)
		*rejected = batch->nrejects + batch->ndb_rejects;
}

/* ---------- held readings ---------- */

/*
 * Ingest again up to max held readings (dead letters whose reason starts
 * with "held: "), in the current transaction: their rows leave
 * iotpipe.dead_letters and go through the whole ingest path (partitions,
 * write, sensors, alerts), or are held again.  Rows another transaction
 * has locked are skipped.  Returns how many were taken.  For the launcher.
 */
int
iotpipe_ingest_retry_held(int max)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "iotpipe held readings",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	IotBatch   *batch = iotpipe_batch_create(cxt);
	Datum		arg = Int32GetDatum(max);
	uint64		n;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			type = INT4OID;

		plan = iotpipe_keep_plan("DELETE FROM iotpipe.dead_letters d WHERE d.id OPERATOR(pg_catalog.=) ANY ("
								 "  SELECT h.id FROM iotpipe.dead_letters h"
								 "   WHERE pg_catalog.starts_with(h.error, 'held: ')"
								 "   ORDER BY h.id LIMIT $1 FOR UPDATE SKIP LOCKED)"
								 " RETURNING d.source, d.payload",
								 1, &type, 0);
	}
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "could not take the held readings");
	n = SPI_processed;
	MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		source = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		bytea	   *payload = DatumGetByteaPCopy(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		IotSource	src = {0};

		src.source = TextDatumGetCString(source);
		iotpipe_batch_add(batch, VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &src);
	}
	SPI_finish();
	if (n > 0)
		iotpipe_batch_flush(batch, NULL, NULL);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return (int) n;
}

/* ---------- SQL: iotpipe.ingest_json(text[]) / ingest_json_bytes(bytea[]) ---------- */

static Datum
ingest_array(FunctionCallInfo fcinfo)
{
	ArrayType  *arr;
	ArrayIterator it;
	Datum		value;
	bool		isnull;
	IotBatch   *batch;
	IotSource	src = {0};
	uint64		total_acc = 0,
				total_rej = 0;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	MemoryContext percall;
	MemoryContext old;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	iotpipe_require_version();

	if (PG_ARGISNULL(0))
	{
		values[0] = Int64GetDatum(0);
		values[1] = Int64GetDatum(0);
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
	}
	if (GetDatabaseEncoding() != PG_UTF8)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("iotpipe requires a database with UTF8 encoding")));

	src.source = PG_ARGISNULL(1) ? "sql" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("payloads must be a one-dimensional array")));

	percall = AllocSetContextCreate(CurrentMemoryContext, "iotpipe ingest_json",
									ALLOCSET_DEFAULT_SIZES);
	batch = iotpipe_batch_create(percall);
	it = array_create_iterator(arr, 0, NULL);
	old = MemoryContextSwitchTo(percall);
	while (array_iterate(it, &value, &isnull))
	{
		CHECK_FOR_INTERRUPTS();
		if (isnull)
			iotpipe_batch_reject(batch, "", 0, &src, "message is NULL");
		else
		{
			struct varlena *v = PG_DETOAST_DATUM_PACKED(value);

			iotpipe_batch_add(batch, VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v), &src);
			if ((Pointer) v != DatumGetPointer(value))
				pfree(v);
		}
		if (iotpipe_batch_count(batch) >= iotpipe_batch_size)
		{
			uint64		a,
						r;

			iotpipe_batch_flush(batch, &a, &r);
			total_acc += a;
			total_rej += r;
			iotpipe_batch_reset(batch);
		}
	}
	if (iotpipe_batch_count(batch) > 0)
	{
		uint64		a,
					r;

		iotpipe_batch_flush(batch, &a, &r);
		total_acc += a;
		total_rej += r;
	}
	array_free_iterator(it);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(percall);

	values[0] = Int64GetDatum((int64) total_acc);
	values[1] = Int64GetDatum((int64) total_rej);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

PG_FUNCTION_INFO_V1(iotpipe_ingest_json);
Datum
iotpipe_ingest_json(PG_FUNCTION_ARGS)
{
	return ingest_array(fcinfo);
}

PG_FUNCTION_INFO_V1(iotpipe_ingest_json_bytes);
Datum
iotpipe_ingest_json_bytes(PG_FUNCTION_ARGS)
{
	return ingest_array(fcinfo);
}
