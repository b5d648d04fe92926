/*-------------------------------------------------------------------------
 *
 * iotpipe.c
 *	  Entry point of the iotpipe library: _PG_init only wires the modules
 *	  together; the preload check refuses to work without
 *	  shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "iotpipe.h"
#include "alerts.h"
#include "guc.h"
#include "kafka_common.h"
#include "launcher.h"
#include "shmem.h"

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

static bool iotpipe_preloaded = false;

void		_PG_init(void);

void
_PG_init(void)
{
	iotpipe_preloaded = process_shared_preload_libraries_in_progress;

	iotpipe_guc_init(iotpipe_preloaded);
	if (!iotpipe_preloaded)
		return;

	iotpipe_shmem_init();
	iotpipe_alerts_init();
	iotpipe_kafka_init();
	iotpipe_launcher_register();
}

PG_FUNCTION_INFO_V1(iotpipe_check_preload);
Datum
iotpipe_check_preload(PG_FUNCTION_ARGS)
{
	iotpipe_require_preload();
	PG_RETURN_VOID();
}
