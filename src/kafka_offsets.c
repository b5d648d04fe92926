/*-------------------------------------------------------------------------
 *
 * kafka_offsets.c
 *	  What a Kafka consumer worker reads and writes in PostgreSQL: its
 *	  source (iotpipe.kafka_sources), the stored offsets
 *	  (iotpipe.kafka_offsets, the only truth about what was ingested), the
 *	  batch transaction and the watermarks (iotpipe.kafka_watermarks).
 *	  Design and guarantees: docs/kafka.md.
 *
 *	  The fence: a batch's offsets upsert only moves a partition's
 *	  next_offset from the value this worker knows (read when it got the
 *	  partition, or written by its own last batch), so a batch raced by a
 *	  rebalance matches fewer rows than it has partitions and the whole
 *	  transaction (rows, dead letters, offsets) rolls back.
 *
 *	  Every function here runs its SQL in a transaction of its own through
 *	  the worker runtime and never throws.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "ingest.h"
#include "spiutil.h"
#include "worker.h"
#include "kafka_offsets.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

static SPIPlanPtr offsets_plan = NULL;
static SPIPlanPtr watermarks_plan = NULL;

/* ---------- the source ---------- */

typedef struct SourceArg
{
	int			source_id;
	IotKafkaSource *src;
	MemoryContext cxt;
} SourceArg;

/* src->topic stays NULL if the source is gone */
static void
read_source_tx(void *arg)
{
	SourceArg  *sa = (SourceArg *) arg;
	IotKafkaSource *src = sa->src;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(sa->source_id)};
	MemoryContext old;
	uint64		i;

	if (SPI_execute_with_args("SELECT enabled, brokers, topic, group_id FROM iotpipe.kafka_sources "
							  "WHERE source_id OPERATOR(pg_catalog.=) $1", 1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		return;
	old = MemoryContextSwitchTo(sa->cxt);
	src->enabled = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	src->brokers = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	src->topic = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	src->group_id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	MemoryContextSwitchTo(old);

	/*
	 * A value is a scalar (its text) or {"file": name}: the name only, the
	 * secret is read when the conf is built.  Any other shape gives neither
	 * (NULL, NULL) and the conf refuses it.
	 */
	if (SPI_execute_with_args("SELECT e.key, "
							  "  CASE WHEN pg_catalog.jsonb_typeof(e.value) OPERATOR(pg_catalog.=) ANY "
							  "            ('{string,number,boolean}'::pg_catalog.text[]) "
							  "       THEN e.value OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[] END, "
							  "  CASE WHEN pg_catalog.jsonb_typeof(e.value) OPERATOR(pg_catalog.=) 'object' "
							  "        AND (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(e.value)) "
							  "            OPERATOR(pg_catalog.=) 1 "
							  "        AND pg_catalog.jsonb_typeof(e.value OPERATOR(pg_catalog.->) 'file'::pg_catalog.text) "
							  "            OPERATOR(pg_catalog.=) 'string' "
							  "       THEN e.value OPERATOR(pg_catalog.->>) 'file'::pg_catalog.text END "
							  "FROM iotpipe.kafka_sources s, pg_catalog.jsonb_each(s.options) e "
							  "WHERE s.source_id OPERATOR(pg_catalog.=) $1 ORDER BY 1",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the options of the kafka source");
	old = MemoryContextSwitchTo(sa->cxt);
	src->nopts = (int) SPI_processed;
	src->keys = palloc(sizeof(char *) * Max(src->nopts, 1));
	src->vals = palloc(sizeof(char *) * Max(src->nopts, 1));
	src->files = palloc(sizeof(char *) * Max(src->nopts, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		src->keys[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		src->vals[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		src->files[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
		if (strcmp(src->keys[i], "auto.offset.reset") == 0 && src->vals[i] != NULL)
			src->start_at_end = (strcmp(src->vals[i], "latest") == 0 ||
								 strcmp(src->vals[i], "largest") == 0 ||
								 strcmp(src->vals[i], "end") == 0);
	}
	MemoryContextSwitchTo(old);
}

bool
iotpipe_kafka_read_source(int source_id, IotKafkaSource *src, MemoryContext cxt)
{
	SourceArg	sa = {source_id, src, cxt};

	memset(src, 0, sizeof(IotKafkaSource));
	return iotpipe_worker_xact(read_source_tx, &sa, "reading the source", true);
}

/* ---------- partitions ---------- */

IotKafkaPart *
iotpipe_kafka_part(IotKafkaParts *parts, int32 partition)
{
	if (partition < 0)
		return NULL;
	if (partition >= parts->n)
	{
		int			n = Max(partition + 1, parts->n * 2);
		int			i;

		parts->p = repalloc(parts->p, sizeof(IotKafkaPart) * n);
		for (i = parts->n; i < n; i++)
		{
			memset(&parts->p[i], 0, sizeof(IotKafkaPart));
			parts->p[i].committed = parts->p[i].pos = -1;
			parts->p[i].lo = parts->p[i].hi = parts->p[i].hi_written = -1;
		}
		parts->n = n;
	}
	return &parts->p[partition];
}

void
iotpipe_kafka_unassign_all(IotKafkaParts *parts)
{
	int			i;

	for (i = 0; i < parts->n; i++)
		parts->p[i].assigned = parts->p[i].in_batch = false;
}

/* ---------- stored offsets into the assignment ---------- */

typedef struct OffsetsArg
{
	const char *topic;
	IotKafkaParts *parts;
	rd_kafka_topic_partition_list_t *list;
} OffsetsArg;

static void
load_offsets_tx(void *arg)
{
	OffsetsArg *oa = (OffsetsArg *) arg;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(oa->topic)};
	uint64		r;
	int			i;

	if (SPI_execute_with_args("SELECT partition, next_offset FROM iotpipe.kafka_offsets "
							  "WHERE topic OPERATOR(pg_catalog.=) $1",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read iotpipe.kafka_offsets");
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));
		int64		off = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));

		for (i = 0; i < oa->list->cnt; i++)
			if (oa->list->elems[i].partition == p)
			{
				oa->list->elems[i].offset = off;
				oa->parts->p[p].committed = off;
			}
	}
}

bool
iotpipe_kafka_load_offsets(const IotKafkaSource *src, IotKafkaParts *parts,
						   rd_kafka_topic_partition_list_t *list)
{
	OffsetsArg	oa = {src->topic, parts, list};
	bool		ok;
	int			i;

	for (i = 0; i < list->cnt; i++)
	{
		iotpipe_kafka_part(parts, list->elems[i].partition)->committed = -1;
		list->elems[i].offset = src->start_at_end ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
	}
	/* callbacks only run inside librdkafka calls made outside transactions */
	ok = !IsTransactionState() &&
		iotpipe_worker_xact(load_offsets_tx, &oa, "reading stored offsets", true);
	iotpipe_kafka_unassign_all(parts);
	for (i = 0; ok && i < list->cnt; i++)
	{
		IotKafkaPart *ps = &parts->p[list->elems[i].partition];

		ps->assigned = true;
		ps->pos = ps->committed;
	}
	return ok;
}

/* ---------- watermarks ---------- */

/* upsert the cached watermarks that changed; in the caller's transaction, SPI connected */
static void
write_watermarks(const char *topic, IotKafkaParts *parts)
{
	Datum	   *nums = palloc(sizeof(Datum) * parts->n);
	Datum	   *los = palloc(sizeof(Datum) * parts->n);
	Datum	   *his = palloc(sizeof(Datum) * parts->n);
	bool	   *lonulls = palloc(sizeof(bool) * parts->n);
	Datum		args[4];
	int			n = 0,
				i,
				ret;

	for (i = 0; i < parts->n; i++)
	{
		IotKafkaPart *ps = &parts->p[i];

		if (!ps->assigned || ps->hi < 0 || ps->hi == ps->hi_written)
			continue;
		nums[n] = Int32GetDatum(i);
		los[n] = Int64GetDatum(ps->lo);
		lonulls[n] = (ps->lo < 0);
		his[n] = Int64GetDatum(ps->hi);
		n++;
	}
	if (n == 0)
		return;
	if (watermarks_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

		watermarks_plan =
			iotpipe_keep_plan("INSERT INTO iotpipe.kafka_watermarks AS w "
							  "  (topic, partition, low_watermark, high_watermark, updated_at) "
							  "SELECT $1, p, lo, hi, pg_catalog.now() "
							  "  FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), "
							  "                  pg_catalog.unnest($4)) AS t(p, lo, hi) "
							  "ON CONFLICT (topic, partition) DO UPDATE "
							  "  SET low_watermark = EXCLUDED.low_watermark, "
							  "      high_watermark = EXCLUDED.high_watermark, "
							  "      updated_at = pg_catalog.now()",
							  4, types, 0);
	}
	args[0] = CStringGetTextDatum(topic);
	args[1] = iotpipe_byval_array(nums, NULL, n, INT4OID);
	args[2] = iotpipe_byval_array(los, lonulls, n, INT8OID);
	args[3] = iotpipe_byval_array(his, NULL, n, INT8OID);
	ret = SPI_execute_plan(watermarks_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "watermarks upsert failed: %s", SPI_result_code_string(ret));
}

/* after a commit: mark the watermarks written */
static void
watermarks_written(IotKafkaParts *parts)
{
	int			i;

	for (i = 0; i < parts->n; i++)
		if (parts->p[i].assigned && parts->p[i].hi >= 0)
			parts->p[i].hi_written = parts->p[i].hi;
}

typedef struct WatermarksArg
{
	const char *topic;
	IotKafkaParts *parts;
} WatermarksArg;

static void
write_watermarks_tx(void *arg)
{
	WatermarksArg *wa = (WatermarksArg *) arg;

	write_watermarks(wa->topic, wa->parts);
}

bool
iotpipe_kafka_publish_watermarks(const char *topic, IotKafkaParts *parts)
{
	WatermarksArg wa = {topic, parts};

	if (!iotpipe_worker_xact(write_watermarks_tx, &wa, "publishing watermarks", true))
		return false;
	watermarks_written(parts);
	return true;
}

/* ---------- the batch transaction ---------- */

typedef struct BatchArg
{
	const char *topic;
	IotKafkaParts *parts;
	IotBatch   *batch;
	bool		with_watermarks;
	int			n;				/* partitions in the batch */
	Datum	   *nums;
	Datum	   *expected;
	Datum	   *next;
	uint64		accepted;
	uint64		rejected;
	bool		fenced;
} BatchArg;

static void
commit_batch_tx(void *arg)
{
	BatchArg   *ba = (BatchArg *) arg;
	Datum		args[4];

	iotpipe_batch_flush(ba->batch, &ba->accepted, &ba->rejected);
	if (offsets_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};

		/*
		 * The fence: a stored offset only moves from the value we know.  An
		 * existing row never matches expected = -1 (we saw none).
		 */
		offsets_plan =
			iotpipe_keep_plan("INSERT INTO iotpipe.kafka_offsets AS o "
							  "  (topic, partition, next_offset, updated_at) "
							  "SELECT $1, p, nxt, pg_catalog.now() "
							  "  FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($4)) AS t(p, nxt) "
							  "ON CONFLICT (topic, partition) DO UPDATE "
							  "  SET next_offset = EXCLUDED.next_offset, updated_at = pg_catalog.now() "
							  "  WHERE o.next_offset OPERATOR(pg_catalog.=) "
							  "        ($3)[pg_catalog.array_position($2, o.partition)]",
							  4, types, 0);
	}
	args[0] = CStringGetTextDatum(ba->topic);
	args[1] = iotpipe_byval_array(ba->nums, NULL, ba->n, INT4OID);
	args[2] = iotpipe_byval_array(ba->expected, NULL, ba->n, INT8OID);
	args[3] = iotpipe_byval_array(ba->next, NULL, ba->n, INT8OID);
	if (SPI_execute_plan(offsets_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "kafka offsets upsert failed");
	if (SPI_processed != (uint64) ba->n)
	{
		ba->fenced = true;
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("stored offsets of topic \"%s\" were moved by another consumer", ba->topic),
				 errdetail("The batch is rolled back and consumed again from the stored offsets.")));
	}
	if (ba->with_watermarks)
		write_watermarks(ba->topic, ba->parts);
}

bool
iotpipe_kafka_commit_batch(const char *topic, IotKafkaParts *parts, IotBatch *batch,
						   bool with_watermarks, uint64 *accepted, uint64 *rejected,
						   bool *fenced)
{
	BatchArg	ba = {topic, parts, batch, with_watermarks};
	bool		ok;
	int			i;

	ba.nums = palloc(sizeof(Datum) * parts->n);
	ba.expected = palloc(sizeof(Datum) * parts->n);
	ba.next = palloc(sizeof(Datum) * parts->n);
	for (i = 0; i < parts->n; i++)
	{
		if (!parts->p[i].in_batch)
			continue;
		ba.nums[ba.n] = Int32GetDatum(i);
		ba.expected[ba.n] = Int64GetDatum(parts->p[i].committed);
		ba.next[ba.n] = Int64GetDatum(parts->p[i].batch_next);
		ba.n++;
	}
	ok = iotpipe_worker_xact(commit_batch_tx, &ba, "writing a batch", true);
	*fenced = !ok && ba.fenced;
	*accepted = ba.accepted;
	*rejected = ba.rejected;
	if (ok && with_watermarks)
		watermarks_written(parts);
	pfree(ba.nums);
	pfree(ba.expected);
	pfree(ba.next);
	return ok;
}
