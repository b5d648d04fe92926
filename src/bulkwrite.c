/*-------------------------------------------------------------------------
 *
 * bulkwrite.c
 *	  One bulk writer for the ingest core's direct path (ingest.c) and the
 *	  warehouse ETL (etl_write.c): rows go into their tables as COPY writes
 *	  them, with table_multi_insert, then each row's index entries, but
 *	  without the executor's per-row work.
 *
 *	  A writer has one target per table it writes: the plain table it
 *	  opened (iotpipe_bulk_open_table), or the partitions PostgreSQL's own
 *	  tuple routing picks for each row (iotpipe_bulk_open_routed).  Each
 *	  target buffers up to BULK_BUFFERED filled slots and writes them in one
 *	  multi-insert when full and at close, with a bulk-insert state of its
 *	  own (so that each partition keeps its current page).
 *
 *	  What is direct is only what needs nothing of the executor: no
 *	  triggers, no row security, no generated columns, no foreign table, no
 *	  partition laid out differently from its root.  A routed writer refuses
 *	  those (NULL), before anything is written, and the ingest core uses
 *	  COPY, which knows all of that.  A plain table must hold exactly the
 *	  caller's columns: these rows bypass the executor, so there is nobody
 *	  to compute a default.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "bulkwrite.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/execPartition.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#define BULK_BUFFERED	1000
#define BULK_MAX_COLUMNS 64

struct BulkTarget
{
	ResultRelInfo *rri;
	BulkInsertState bis;
	TupleTableSlot *slots[BULK_BUFFERED];
	int			nalloc;			/* slots made */
	int			n;				/* slots filled */
};

struct BulkWriter
{
	Relation	rel;			/* the table opened or given */
	bool		routed;
	EState	   *estate;
	int			options;		/* table_multi_insert options */
	/* routed */
	ResultRelInfo *root;
	ModifyTableState *mtstate;
	PartitionTupleRouting *proute;	/* NULL: not partitioned */
	TupleTableSlot *rootslot;
	/* the targets, each allocated on its own (callers hold them) */
	BulkTarget **targets;
	int			ntargets;
	int			targets_cap;
	/* iotpipe_bulk_open_table: the caller's columns in the table */
	int			ncols;
	int			attmap[BULK_MAX_COLUMNS];
	int64		written;
};

/* no triggers, row security or generated columns */
static bool
bulk_rel_direct(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	return rel->trigdesc == NULL && !rel->rd_rel->relrowsecurity &&
		!(desc->constr && desc->constr->has_generated_stored);
}

static BulkTarget *
bulk_add_target(BulkWriter *w, ResultRelInfo *rri)
{
	BulkTarget *t = palloc0(sizeof(BulkTarget));

	t->rri = rri;
	t->bis = GetBulkInsertState();
	if (w->ntargets == w->targets_cap)
	{
		w->targets_cap = w->targets_cap ? w->targets_cap * 2 : 4;
		w->targets = w->targets ?
			repalloc(w->targets, sizeof(BulkTarget *) * w->targets_cap) :
			palloc(sizeof(BulkTarget *) * w->targets_cap);
	}
	w->targets[w->ntargets++] = t;
	return t;
}

/*
 * Write n filled slots of one table as COPY does: table_multi_insert, then
 * each slot's index entries; the slots are cleared.
 */
static void
bulk_flush(BulkWriter *w, BulkTarget *t)
{
	ResultRelInfo *rri = t->rri;
	EState	   *estate = w->estate;

	if (t->n == 0)
		return;
	table_multi_insert(rri->ri_RelationDesc, t->slots, t->n, GetCurrentCommandId(true),
					   w->options, t->bis);
	for (int i = 0; i < t->n; i++)
	{
		if (rri->ri_NumIndices > 0)
		{
			List	   *recheck;

			ResetPerTupleExprContext(estate);
			recheck = ExecInsertIndexTuples(rri, t->slots[i], estate, false, false, NULL, NIL);
			list_free(recheck);
		}
		ExecClearTuple(t->slots[i]);
	}
	w->written += t->n;
	t->n = 0;
}

/* ------------------------------------------------------------ plain table */

BulkWriter *
iotpipe_bulk_open_table(const char *schema, const char *table, const BulkColumn *cols,
						int ncols)
{
	Oid			relid = get_relname_relid(table, get_namespace_oid(schema, false));
	BulkWriter *w;
	TupleDesc	desc;
	ResultRelInfo *rri;

	Assert(ncols <= BULK_MAX_COLUMNS);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" does not exist", schema, table),
				 errhint("Reinstall the iotpipe extension.")));
	w = palloc0(sizeof(BulkWriter));
	w->rel = table_open(relid, RowExclusiveLock);
	desc = RelationGetDescr(w->rel);
	w->ncols = ncols;

	/*
	 * Match the columns by name and type; dropped columns are skipped (left
	 * NULL), any other column is an error: these rows bypass the executor,
	 * so there is nobody to compute a default or check a constraint.
	 */
	for (int i = 0; i < ncols; i++)
		w->attmap[i] = -1;
	for (int j = 0; j < desc->natts; j++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, j);
		int			i;

		if (a->attisdropped)
			continue;
		for (i = 0; i < ncols; i++)
			if (strcmp(NameStr(a->attname), cols[i].name) == 0)
				break;
		if (i == ncols || a->atttypid != cols[i].type)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s.%s does not have the columns iotpipe expects", schema, table),
					 i == ncols ?
					 errdetail("Column \"%s\" is not one of iotpipe's.", NameStr(a->attname)) :
					 errdetail("Column \"%s\" should be of type %s.", cols[i].name,
							   format_type_be(cols[i].type)),
					 errhint("Do not alter iotpipe's warehouse tables; create views or other tables instead.")));
		w->attmap[i] = j;
	}
	for (int i = 0; i < ncols; i++)
		if (w->attmap[i] < 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s.%s does not have the columns iotpipe expects", schema, table),
					 errdetail("Column \"%s\" is missing.", cols[i].name),
					 errhint("Reinstall the iotpipe extension, or run iotpipe.reset_warehouse() after restoring the column.")));

	w->estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, w->rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	bulk_add_target(w, rri);

	/*
	 * A table emptied by TRUNCATE in this very subtransaction (a full load):
	 * nothing else can see its new file before we commit, so the rows go in
	 * frozen, pages all-visible, as COPY FREEZE writes them.  Analysts'
	 * first queries then do not rewrite every page to set hint bits.
	 */
	if (w->rel->rd_newRelfilenodeSubid == GetCurrentSubTransactionId() ||
		w->rel->rd_createSubid == GetCurrentSubTransactionId())
		w->options |= TABLE_INSERT_SKIP_FSM | TABLE_INSERT_FROZEN;
	return w;
}

void
iotpipe_bulk_put(BulkWriter *w, const Datum *values, const bool *nulls)
{
	BulkTarget *t = w->targets[0];
	TupleTableSlot *slot = iotpipe_bulk_slot(w, t);
	int			natts = slot->tts_tupleDescriptor->natts;

	Assert(!w->routed);
	if (natts != w->ncols)
		for (int j = 0; j < natts; j++)
			slot->tts_isnull[j] = true; /* dropped columns */
	for (int i = 0; i < w->ncols; i++)
	{
		slot->tts_values[w->attmap[i]] = values[i];
		slot->tts_isnull[w->attmap[i]] = nulls[i];
	}
	iotpipe_bulk_store(w, t, slot);
}

/* ----------------------------------------------------------------- routed */

BulkWriter *
iotpipe_bulk_open_routed(Relation rel, List *rtable)
{
	BulkWriter *w;
	EState	   *estate;
	ResultRelInfo *root;
	ModifyTableState *mtstate;

	if ((rel->rd_rel->relkind != RELKIND_RELATION &&
		 rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE) || !bulk_rel_direct(rel))
		return NULL;

	w = palloc0(sizeof(BulkWriter));
	w->rel = rel;
	w->routed = true;
	w->estate = estate = CreateExecutorState();
	ExecInitRangeTable(estate, rtable);
	root = makeNode(ResultRelInfo);
	ExecInitResultRelation(estate, root, 1);
	CheckValidResultRel(root, CMD_INSERT);
	mtstate = makeNode(ModifyTableState);
	mtstate->ps.plan = NULL;
	mtstate->ps.state = estate;
	mtstate->operation = CMD_INSERT;
	mtstate->mt_nrels = 1;
	mtstate->resultRelInfo = root;
	mtstate->rootResultRelInfo = root;
	w->root = root;
	w->mtstate = mtstate;
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		w->proute = ExecSetupPartitionTupleRouting(estate, rel);
	else
	{
		/* the table itself is the one target */
		ExecOpenIndices(root, false);
		bulk_add_target(w, root);
	}
	w->rootslot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);
	return w;
}

TupleTableSlot *
iotpipe_bulk_root_slot(BulkWriter *w)
{
	Assert(w->routed);
	return w->rootslot;
}

BulkTarget *
iotpipe_bulk_route(BulkWriter *w, TupleTableSlot *slot)
{
	ResultRelInfo *prri;
	Relation	prel;

	Assert(w->routed);
	if (w->proute == NULL)
		return w->targets[0];
	prri = ExecFindPartition(w->mtstate, w->root, w->proute, slot, w->estate);
	for (int k = 0; k < w->ntargets; k++)
		if (w->targets[k]->rri == prri)
			return w->targets[k];
	prel = prri->ri_RelationDesc;
	if (prri->ri_TrigDesc != NULL || prri->ri_FdwRoutine != NULL ||
		prri->ri_RootToPartitionMap != NULL ||
		prel->rd_rel->relkind != RELKIND_RELATION || !bulk_rel_direct(prel))
		return NULL;
	return bulk_add_target(w, prri);
}

/* ------------------------------------------------------------------- rows */

TupleTableSlot *
iotpipe_bulk_slot(BulkWriter *w, BulkTarget *t)
{
	if (t == NULL)
		t = w->targets[0];
	if (t->n == BULK_BUFFERED)
		bulk_flush(w, t);
	if (t->n == t->nalloc)
		t->slots[t->nalloc++] = table_slot_create(t->rri->ri_RelationDesc,
												  &w->estate->es_tupleTable);
	return t->slots[t->n++];
}

void
iotpipe_bulk_store(BulkWriter *w, BulkTarget *t, TupleTableSlot *slot)
{
	if (t == NULL)
		t = w->targets[0];
	Assert(t->n > 0 && t->slots[t->n - 1] == slot);
	ExecStoreVirtualTuple(slot);
	if (w->routed && t->rri->ri_RelationDesc->rd_att->constr)
		ExecConstraints(t->rri, slot, w->estate);
}

int64
iotpipe_bulk_close(BulkWriter *w, bool discard)
{
	int64		written;

	for (int k = 0; k < w->ntargets; k++)
	{
		BulkTarget *t = w->targets[k];

		if (!discard)
		{
			bulk_flush(w, t);
			table_finish_bulk_insert(t->rri->ri_RelationDesc, w->options);
		}
		FreeBulkInsertState(t->bis);
	}
	if (w->routed)
	{
		if (w->proute != NULL)
			ExecCleanupTupleRouting(w->mtstate, w->proute);
		ExecResetTupleTable(w->estate->es_tupleTable, false);
		ExecCloseResultRelations(w->estate);
		ExecCloseRangeTableRelations(w->estate);
		FreeExecutorState(w->estate);
	}
	else
	{
		/* the slots were made in the caller's context: free them */
		ExecResetTupleTable(w->estate->es_tupleTable, true);
		w->estate->es_tupleTable = NIL;
		ExecCloseIndices(w->targets[0]->rri);
		FreeExecutorState(w->estate);
		table_close(w->rel, NoLock);
	}
	for (int k = 0; k < w->ntargets; k++)
		pfree(w->targets[k]);
	pfree(w->targets);
	written = w->written;
	pfree(w);
	return written;
}
