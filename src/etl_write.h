/*-------------------------------------------------------------------------
 *
 * etl_write.h
 *	  iotpipe._etl_emit(): transform the collected readings and write the
 *	  warehouse rows (etl_write.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ETL_WRITE_H
#define IOTPIPE_ETL_WRITE_H

#include "iotpipe.h"

#include "fmgr.h"

/*
 * iotpipe._etl_emit(full bool)
 *   RETURNS TABLE (facts_new bigint, facts_changed bigint, hours bigint,
 *                  days bigint)
 * Needs a preceding iotpipe._etl_collect() in the same transaction.
 */
extern Datum iotpipe_etl_emit(PG_FUNCTION_ARGS);

#endif							/* IOTPIPE_ETL_WRITE_H */
