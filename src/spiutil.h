/*-------------------------------------------------------------------------
 *
 * spiutil.h
 *	  Small helpers every module that talks SQL shares: plans kept for the
 *	  life of the backend, one-dimensional array builders (spiutil.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_SPIUTIL_H
#define IOTPIPE_SPIUTIL_H

#include "iotpipe.h"

#include "executor/spi.h"

/*
 * Prepare sql and keep the plan for the life of the backend (SPI_keepplan).
 * Call it through a static cache: plan = plan ? plan : iotpipe_keep_plan(...).
 * Fails with the statement and SPI's reason when it does not prepare.
 */
extern SPIPlanPtr iotpipe_keep_plan(const char *sql, int nargs, const Oid *types,
									int cursor_options);

/* one-dimensional arrays (lower bound 1) of n elements, palloc'd */
extern Datum iotpipe_text_array(Datum *elems, bool *nulls, int n);
extern Datum iotpipe_float8_array(Datum *elems, bool *nulls, int n);
/* any element type (bytea, jsonb, ...): its length, by-value and alignment from the catalog */
extern Datum iotpipe_array(Datum *elems, bool *nulls, int n, Oid type);
/* a pass-by-value type of 1, 2, 4 or 8 bytes (bool, int2/4/8, timestamptz) */
extern Datum iotpipe_byval_array(Datum *elems, bool *nulls, int n, Oid type);

#endif							/* IOTPIPE_SPIUTIL_H */
