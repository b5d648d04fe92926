/*-------------------------------------------------------------------------
 *
 * delivery_config.h
 *	  The check of iotpipe.receivers rows and iotpipe.test_receiver()
 *	  (delivery_config.c); both are SQL-callable only.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IOTPIPE_DELIVERY_CONFIG_H
#define IOTPIPE_DELIVERY_CONFIG_H

#include "iotpipe.h"
#include "fmgr.h"

extern Datum iotpipe_receiver_check(PG_FUNCTION_ARGS);
extern Datum iotpipe_test_receiver(PG_FUNCTION_ARGS);

#endif							/* IOTPIPE_DELIVERY_CONFIG_H */
