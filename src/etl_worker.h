/*-------------------------------------------------------------------------
 *
 * etl_worker.h
 *	  The ETL worker: one scheduled pass of iotpipe.run_etl() and raw
 *	  retention, started by the launcher (etl_worker.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_ETL_WORKER_H
#define IOTPIPE_ETL_WORKER_H

#include "iotpipe.h"
#include "fmgr.h"

extern PGDLLEXPORT void iotpipe_etl_main(Datum arg);

#endif							/* IOTPIPE_ETL_WORKER_H */
