/*-------------------------------------------------------------------------
 *
 * delivery_worker.h
 *	  The notifier worker: delivers the outbox iotpipe.notifications
 *	  (delivery_worker.c), started by the launcher while a receiver is
 *	  enabled.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_DELIVERY_WORKER_H
#define IOTPIPE_DELIVERY_WORKER_H

#include "iotpipe.h"
#include "fmgr.h"

extern PGDLLEXPORT void iotpipe_notifier_main(Datum arg);

#endif							/* IOTPIPE_DELIVERY_WORKER_H */
