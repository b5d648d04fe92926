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
 *	         table has triggers or other things only COPY handles
 *	      3. note the batch's sensors and upsert those due (sensors.c)
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
#include "sensors.h"
#include "spiutil.h"
#include "version.h"
#include "worker.h"
#include "ingest.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
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
#include "utils/json.h"
#include "common/shortest_dec.h"
#include "utils/datetime.h"
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

struct IotBatch
{
	MemoryContext cxt;			/* everything of one batch; reset per batch */
	IotReading *readings;
	int			nreadings;
	int			readings_cap;
	IotReject  *rejects;
	int			nrejects;
	int			rejects_cap;
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
	batch->nreadings = 0;
	batch->rejects_cap = 16;
	batch->rejects = MemoryContextAlloc(batch->cxt, sizeof(IotReject) * batch->rejects_cap);
	batch->nrejects = 0;
	batch->now = GetCurrentTimestamp();
	batch->source = NULL;
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
	}
	r = &batch->readings[batch->nreadings];
	old = MemoryContextSwitchTo(batch->cxt);
	reason = iotpipe_parse_message(data, len, r, batch->now, batch->cxt);
	MemoryContextSwitchTo(old);
	if (reason == NULL)
	{
		if (batch->source == NULL)
			batch->source = src->source;
		batch->nreadings++;
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

/* the PGCOPY binary stream of the batch's accepted readings */
static void
build_copy_stream(IotBatch *batch, StringInfo buf)
{
	static const char sig[11] = "PGCOPY\n\377\r\n\0";
	TimestampTz ingested_at = GetCurrentTimestamp();
	uint64		xid = U64FromFullTransactionId(GetTopFullTransactionId());
	int			i;

	enlargeStringInfo(buf, 19 + batch->nreadings * 120);
	appendBinaryStringInfoNT(buf, sig, 11);
	put_int32(buf, 0);			/* flags */
	put_int32(buf, 0);			/* header extension length */
	for (i = 0; i < batch->nreadings; i++)
	{
		IotReading *r = &batch->readings[i];

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
direct_values(TupleTableSlot *slot, IotReading *r, Datum sensor_id, Datum location,
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
insert_readings_direct(IotBatch *batch, Relation rel, List *rtable)
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
	for (int i = 0; i < batch->nreadings; i++)
		text_size += batch->readings[i].sensor_id_len + batch->readings[i].location_len + 2 * (VARHDRSZ + 3);
	text_buf = palloc(text_size + 8);
	ids = palloc(sizeof(Datum) * batch->nreadings);
	locs = palloc(sizeof(Datum) * batch->nreadings);
	{
		char	   *p = text_buf;

		for (int i = 0; i < batch->nreadings; i++)
		{
			IotReading *r = &batch->readings[i];

			ids[i] = direct_text(&p, r->sensor_id, r->sensor_id_len);
			locs[i] = r->location ? direct_text(&p, r->location, r->location_len) : (Datum) 0;
		}
	}

	/* route every row first: nothing is written unless all can go direct */
	rootslot = iotpipe_bulk_root_slot(w);
	dest = palloc(sizeof(BulkTarget *) * batch->nreadings);
	for (int i = 0; i < batch->nreadings; i++)
	{
		ExecClearTuple(rootslot);
		direct_values(rootslot, &batch->readings[i], ids[i], locs[i], ingested_at, xid);
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
		for (int i = 0; i < batch->nreadings; i++)
		{
			TupleTableSlot *slot = iotpipe_bulk_slot(w, dest[i]);

			direct_values(slot, &batch->readings[i], ids[i], locs[i], ingested_at, xid);
			iotpipe_bulk_store(w, dest[i], slot);
		}
	}
	iotpipe_bulk_close(w, !ok);
	return ok;
}

static void
copy_readings(IotBatch *batch)
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
	if (insert_readings_direct(batch, rel, pstate->p_rtable))
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
	build_copy_stream(batch, &buf);

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

static void
write_dead_letters(IotBatch *batch)
{
	int			n = batch->nrejects;
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
		IotReject  *rej = &batch->rejects[i];
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
		/* the reason is ASCII or valid UTF-8 built by us */
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
 * iotpipe.dead_letters as a canonical JSON message of the parsed reading,
 * with a reason starting with "held: ", and the launcher ingests it again
 * (iotpipe_ingest_retry_held).  It is not lost and not written twice.
 */
static void
hold_reading(IotBatch *batch, const IotReading *r, const char *reason)
{
	StringInfoData buf;
	IotSource	src = {0};
	struct pg_tm tm;
	fsec_t		fsec;
	char		num[64];

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"sensor_id\":");
	escape_json(&buf, r->sensor_id);
	if (timestamp2tm(r->ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	appendStringInfo(&buf, ",\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\"",
					 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
	if (r->has_temperature)
	{
		double_to_shortest_decimal_buf(r->temperature, num);
		appendStringInfo(&buf, ",\"temperature\":%s", num);
	}
	if (r->has_humidity)
	{
		double_to_shortest_decimal_buf(r->humidity, num);
		appendStringInfo(&buf, ",\"humidity\":%s", num);
	}
	if (r->location)
	{
		appendStringInfoString(&buf, ",\"location\":");
		escape_json(&buf, pnstrdup(r->location, r->location_len));
	}
	appendStringInfoChar(&buf, '}');
	src.source = batch->source ? batch->source : "sql";
	iotpipe_batch_reject(batch, buf.data, buf.len, &src, reason);
}

/* every reading needs a partition: made now, or the reading is held */
static void
ensure_partitions(IotBatch *batch)
{
	IotPartCheck *pc = iotpipe_partcheck_begin();
	int			keep = 0;

	for (int i = 0; i < batch->nreadings; i++)
	{
		const char *reason = iotpipe_partcheck(pc, batch->readings[i].ts);

		if (reason != NULL)
			hold_reading(batch, &batch->readings[i], reason);
		else
		{
			if (keep != i)
				batch->readings[keep] = batch->readings[i];
			keep++;
		}
	}
	batch->nreadings = keep;
	iotpipe_partcheck_end(pc);
}

void
iotpipe_batch_flush(IotBatch *batch, uint64 *accepted, uint64 *rejected)
{
	MemoryContext old = MemoryContextSwitchTo(batch->cxt);

	if (batch->nreadings > 0)
		ensure_partitions(batch);
	if (batch->nreadings > 0)
		copy_readings(batch);
	if (batch->nreadings > 0 || batch->nrejects > 0)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (batch->nreadings > 0)
		{
			iotpipe_sensors_note(batch->readings, batch->nreadings);
			iotpipe_sensors_write(false);
			iotpipe_alerts_process(iotpipe_batch_readings(batch), iotpipe_batch_nreadings(batch));
		}
		if (batch->nrejects > 0)
			write_dead_letters(batch);
		SPI_finish();
	}
	MemoryContextSwitchTo(old);

	if (accepted)
		*accepted = batch->nreadings;
	if (rejected)
		*rejected = batch->nrejects;
}

/*
 * Write the sensors this backend holds back (see sensors.c), in the current
 * transaction: all of them, or those due.  Workers call it when idle.
 */
void
iotpipe_ingest_write_sensors(bool all)
{
	if (!iotpipe_sensors_pending())
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	iotpipe_sensors_write(all);
	SPI_finish();
}

/*
 * For workers with nothing to ingest: write the sensors that became due, in
 * a short transaction of its own, so that iotpipe.sensors does not stay
 * behind when a stream stops.  Cheap when there is nothing held back.
 */
static void
idle_write_tx(void *arg)
{
	iotpipe_ingest_write_sensors(false);
}

void
iotpipe_ingest_idle(void)
{
	static TimestampTz last_idle_write = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (!iotpipe_sensors_pending() || IsTransactionState())
		return;
	/* at most a few times per refresh interval */
	if (now - last_idle_write < (int64) iotpipe_sensor_refresh_ms * 1000 / 4)
		return;
	last_idle_write = now;
	/* never throws: a failure is logged and published, the write retried later */
	(void) iotpipe_worker_xact(idle_write_tx, NULL, "writing iotpipe.sensors", false);
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
	{
		iotpipe_batch_flush(batch, NULL, NULL);
		iotpipe_ingest_write_sensors(true);
	}
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
	/* nothing of this call is held back: a session may never call again */
	iotpipe_ingest_write_sensors(true);
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
