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

#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

bool		iotpipe_preloaded = false;

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

/*
 * Functions that need the workers or the shared memory call this first.
 */
void
iotpipe_require_preload(void)
{
	if (!iotpipe_preloaded || iotpipe_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("iotpipe must be loaded via shared_preload_libraries"),
				 errhint("Add iotpipe to shared_preload_libraries in postgresql.conf and restart the server.")));
}

PG_FUNCTION_INFO_V1(iotpipe_check_preload);
Datum
iotpipe_check_preload(PG_FUNCTION_ARGS)
{
	iotpipe_require_preload();
	PG_RETURN_VOID();
}
