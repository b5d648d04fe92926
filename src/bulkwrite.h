/*-------------------------------------------------------------------------
 *
 * bulkwrite.h
 *	  The bulk writer shared by the ingest core and the warehouse ETL:
 *	  rows written as COPY writes them, without the executor's per-row
 *	  work (bulkwrite.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_BULKWRITE_H
#define IOTPIPE_BULKWRITE_H

#include "iotpipe.h"

#include "executor/tuptable.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"

/* a column the caller writes, matched by name (iotpipe_bulk_open_table) */
typedef struct BulkColumn
{
	const char *name;
	Oid			type;
} BulkColumn;

typedef struct BulkWriter BulkWriter;
typedef struct BulkTarget BulkTarget;	/* one table written (a partition) */

/*
 * A plain table schema.table, found by name and opened here; its columns
 * must be exactly cols (by name and type, in any order; dropped columns are
 * left NULL), else an error says which column is wrong.  Rows are put with
 * iotpipe_bulk_put(), their values in the order of cols.  A table emptied or
 * created in the current subtransaction is written frozen (as COPY FREEZE).
 * No constraint is checked: for rows the caller computed, into a table whose
 * every column is the caller's (the ETL's warehouse and staging tables).
 */
extern BulkWriter *iotpipe_bulk_open_table(const char *schema, const char *table,
										   const BulkColumn *cols, int ncols);

/*
 * A table the caller opened and checked permissions on (rtable: the range
 * table with its one entry), partitioned or not: rows go through
 * PostgreSQL's tuple routing, NOT NULL and CHECK constraints are checked
 * (as COPY does).  Returns NULL, having done nothing, when the table has
 * what only the executor or COPY handle: triggers, row security, generated
 * columns, or is not a table (a foreign table, a view).  The caller keeps rel open and closes it.
 */
extern BulkWriter *iotpipe_bulk_open_routed(Relation rel, List *rtable);

/* routed: a slot of the root table's row type, to fill and route */
extern TupleTableSlot *iotpipe_bulk_root_slot(BulkWriter *w);

/*
 * Routed: the target of the row in slot (a root slot), or NULL when that
 * partition cannot be written directly (triggers, row security, generated
 * columns, a foreign table, columns laid out differently from the root).
 * Writes nothing: a caller can route every row before writing any.
 */
extern BulkTarget *iotpipe_bulk_route(BulkWriter *w, TupleTableSlot *slot);

/*
 * The next free slot of target t (NULL: the only target of a plain table),
 * empty, of t's row type; the target's buffer is written first when it is
 * full.  Fill tts_values/tts_isnull (every column), then iotpipe_bulk_store().
 */
extern TupleTableSlot *iotpipe_bulk_slot(BulkWriter *w, BulkTarget *t);
/* the filled slot holds a row of t now (routed: its constraints checked) */
extern void iotpipe_bulk_store(BulkWriter *w, BulkTarget *t, TupleTableSlot *slot);

/* iotpipe_bulk_open_table: one row, values in the order of its columns */
extern void iotpipe_bulk_put(BulkWriter *w, const Datum *values, const bool *nulls);

/*
 * Write what is buffered (unless discard: then nothing more is written),
 * release everything; returns the rows written.
 */
extern int64 iotpipe_bulk_close(BulkWriter *w, bool discard);

#endif							/* IOTPIPE_BULKWRITE_H */
